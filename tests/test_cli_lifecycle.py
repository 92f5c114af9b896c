"""What the command-line processes leave behind: connection files, dashboards, open ports."""

import signal
import subprocess
import sys

import pytest

from nbcluster.testing import wait_until


@pytest.fixture
def cli_env(tmp_path):
    import os

    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env.pop("NBCLUSTER_TOKEN", None)
    return env


def _scheduler(env):
    return subprocess.Popen([sys.executable, "-m", "nbcluster", "scheduler", "--port", "0",
                             "--dashboard-port", "-1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def _connection_file(runtime, proc):
    """Wait for the scheduler's connection file, complete (address and token in it)."""
    from nbcluster.config import read_connection_file

    def written():
        for path in runtime.glob("scheduler-*.json"):
            try:
                read_connection_file(path)
                return True
            except (OSError, ValueError, KeyError):
                pass
        return proc.poll() is not None

    wait_until(written, "the connection file")
    assert proc.poll() is None, proc.stderr.read().decode()
    [path] = runtime.glob("scheduler-*.json")
    return path


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stderr.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_scheduler_removes_its_connection_file_on_a_signal(cli_env, tmp_path, sig):
    runtime = tmp_path / "runtime"
    proc = _scheduler(cli_env)
    try:
        path = _connection_file(runtime, proc)
        proc.send_signal(sig)
        code = proc.wait(15)
        assert not path.exists(), f"{path} left behind after {sig.name}"
        assert code == 0, proc.stderr.read().decode()    # closed in order, not killed
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        _stop(proc)


@pytest.mark.timeout(60)
def test_scheduler_keeps_a_connection_file_another_scheduler_wrote(cli_env, tmp_path):
    from nbcluster.config import read_connection_file, write_connection_file

    runtime = tmp_path / "runtime"
    proc = _scheduler(cli_env)
    try:
        path = _connection_file(runtime, proc)
        address, _ = read_connection_file(path)
        write_connection_file(address, "another-schedulers-token", path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert read_connection_file(path) == (address, "another-schedulers-token")
    finally:
        _stop(proc)


LISTENING = """
import json, psutil
from nbcluster.demo import dask_cluster

def listening(processes):
    found = set()
    for p in processes:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                found.add((p.pid, c.laddr.ip, c.laddr.port))
    return found

me = psutil.Process()
before = listening([me])
with dask_cluster() as cluster:
    sockets = listening([me, *me.children(recursive=True)]) - before
    print(json.dumps({"link": cluster.dashboard_link, "sockets": sorted(sockets)}))
"""


@pytest.mark.timeout(120)
def test_the_demos_dask_cluster_listens_on_loopback_only(cli_env):
    """In a process of its own: dask's nannies leave multiprocessing's resource tracker
    running until their parent ends."""
    pytest.importorskip("distributed")
    import json

    proc = subprocess.run([sys.executable, "-c", LISTENING], capture_output=True, text=True,
                          env=cli_env, timeout=100)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["link"].startswith("http://127.0.0.1:")
    sockets = found["sockets"]
    assert len({pid for pid, _, _ in sockets}) >= 3   # the scheduler's process, two workers
    exposed = [s for s in sockets if s[1] != "127.0.0.1"]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


class Lines:
    """A process's stdout lines, read by a thread, waited for with a timeout."""

    def __init__(self, proc):
        import queue
        import threading

        self.proc, self.lines, self.queue = proc, [], queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.queue.put(raw.decode())
        self.queue.put(None)

    def wait_for(self, text, timeout=60):
        import time

        deadline = time.monotonic() + timeout
        while True:
            line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"{text!r} never came:\n{''.join(self.lines)}"
            self.lines.append(line)
            if text in line:
                return line

    def rest(self):
        self.thread.join(20)
        while not self.queue.empty():
            line = self.queue.get()
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def _dashboard_answers(link):
    import urllib.request

    try:
        with urllib.request.urlopen(link, timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_the_demo_says_its_dashboard_is_gone_when_it_is(cli_env):
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "demo", "--no-dask"],
                          capture_output=True, text=True, env=cli_env, timeout=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    [link_line] = [i for i, line in enumerate(lines) if line.startswith("dashboard: http")]
    [closed] = [i for i, line in enumerate(lines) if "cluster closed, and its dashboard" in line]
    assert "--keep" in lines[link_line]        # says how long the link works
    assert link_line < closed
    assert "http" not in "\n".join(lines[closed:])   # no link printed after it is gone


@pytest.mark.timeout(120)
def test_the_demo_with_keep_serves_its_dashboard_until_ctrl_c(cli_env):
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster", "demo", "--no-dask", "--keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env)
    out = Lines(proc)
    try:
        link = out.wait_for("dashboard: http").split()[1]
        still = out.wait_for("press Ctrl-C to stop it")
        assert link in still
        assert _dashboard_answers(link)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read().decode()
        assert "cluster closed, and its dashboard with it" in out.rest()
        assert not _dashboard_answers(link)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        out.rest()
        proc.stdout.close()
        proc.stderr.close()
