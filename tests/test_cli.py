"""The command line: scheduler and worker processes, connection files, fail-fast errors."""

import os
import socket
import subprocess
import sys
import threading
from operator import add

import pytest

from nbcluster import Client
from nbcluster.errors import AuthenticationError, ConnectError
from nbcluster.testing import wait_until


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc, prefix, timeout=20):
    found = []

    def read():
        for raw in proc.stdout:
            line = raw.decode()
            if line.startswith(prefix):
                found.append(line.strip())
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert found, f"no line starting with {prefix!r}"
    return found[0]


@pytest.fixture
def cli_env(tmp_path):
    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env.pop("NBCLUSTER_TOKEN", None)
    return env


def start(args, env, stderr=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, "-m", "nbcluster", *args], stdout=subprocess.PIPE,
                            stderr=stderr, env=env)


def stop(*procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()


def test_scheduler_and_worker_from_the_command_line(cli_env, monkeypatch):
    port = free_port()
    scheduler = start(["scheduler", "--host", "127.0.0.1", "--port", str(port)], cli_env)
    workers = []
    try:
        line = read_line(scheduler, "nbcluster scheduler at")
        address = line.rsplit(" ", 1)[1]
        assert address == f"tcp://127.0.0.1:{port}"
        conn_line = read_line(scheduler, "connection file")
        path = conn_line.rsplit(" ", 1)[1]
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        workers = [start(["worker", address, "--nthreads", "2", "--name", f"w{i}",
                          "--memory-limit", f"{i + 1}GiB"], cli_env,
                         stderr=subprocess.PIPE) for i in range(2)]
        monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", cli_env["NBCLUSTER_RUNTIME_DIR"])
        with Client(address) as client:   # token found in the connection file
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, "two workers")
            info = client.scheduler_info()["workers"]
            assert sorted(w["name"] for w in info.values()) == ["w0", "w1"]
            assert all(w["nthreads"] == 2 for w in info.values())
            assert sorted(w["identity"]["memory_limit"] for w in info.values()) == [2**30, 2**31]
            assert client.gather(client.map(add, range(100), range(100))) == [2 * i for i in range(100)]
        # a wrong token is refused with a message naming the address
        with pytest.raises(AuthenticationError, match=address):
            Client(address, token="wrong", timeout=5)
    finally:
        for w in workers:
            w.stderr.close()
        stop(*workers, scheduler)


def test_sigterm_closes_worker_and_scheduler_in_order(cli_env, monkeypatch):
    import signal

    port = free_port()
    scheduler = start(["scheduler", "--port", str(port), "--dashboard-port", "-1"], cli_env)
    worker = None
    try:
        address = read_line(scheduler, "nbcluster scheduler at").rsplit(" ", 1)[1]
        worker = start(["worker", address], cli_env)
        monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", cli_env["NBCLUSTER_RUNTIME_DIR"])
        with Client(address) as client:
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, "the worker")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(15) == 0                     # closed, not killed
            wait_until(lambda: not client.scheduler_info()["workers"],
                       "the scheduler to see the worker go", timeout=10)
        scheduler.send_signal(signal.SIGTERM)
        assert scheduler.wait(15) == 0
    finally:
        stop(*[p for p in (worker, scheduler) if p is not None])


def test_client_to_missing_address_fails_fast():
    port = free_port()
    with pytest.raises(ConnectError, match=f"tcp://127.0.0.1:{port}"):
        Client(f"tcp://127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectError, match="not an address"):
        Client("127.0.0.1:8786")


def test_worker_to_missing_address_fails_fast(cli_env):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "worker", f"tcp://127.0.0.1:{port}"],
                          capture_output=True, text=True, env=cli_env, timeout=30)
    assert proc.returncode == 1
    assert f"tcp://127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--memory-limit", "lots", "memory limit must be bytes, 'auto', 'none' or like '4GB'"),
    ("--memory-pause", "1.5", "--memory-pause must be a fraction of the memory limit"),
    ("--memory-terminate", "x", "--memory-terminate must be a fraction of the memory limit"),
])
def test_worker_refuses_bad_memory_options(cli_env, option, value, message):
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "worker", "tcp://127.0.0.1:9",
                           option, value], capture_output=True, text=True, env=cli_env, timeout=30)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scheduler_on_a_taken_port_fails_fast(cli_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "nbcluster", "scheduler", "--port", str(port)],
                              capture_output=True, text=True, env=cli_env, timeout=30)
    assert proc.returncode == 1
    assert f"tcp://127.0.0.1:{port}" in proc.stderr


def test_demo_runs(cli_env):
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "demo", "--no-dask"],
                          capture_output=True, text=True, env=cli_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("round trip", "1000 adds", "chord of 100", "1000/1000"):
        assert name in proc.stdout
