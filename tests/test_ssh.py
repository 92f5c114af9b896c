"""SSHCluster against a real OpenSSH server on 127.0.0.1, and the CLI's --token-stdin.

The sshd runs in the foreground as a child of this test process for the whole module, so the
``no_leftovers`` fixture sees every remote process (sshd's session children) a test leaves.
"""

import getpass
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from operator import add

import psutil
import pytest

from nbcluster import Client
from nbcluster.errors import ClusterError, ConnectError
from nbcluster.testing import wait_until

SSHD = "/usr/sbin/sshd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A foreground sshd on a free loopback port, accepting one generated key."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server)")
    asyncssh = pytest.importorskip("asyncssh", reason="pip install 'nbcluster[ssh]'")
    d = tmp_path_factory.mktemp("sshd")
    host_key, client_key = d / "host_key", d / "client_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(client_key))
    key.write_public_key(str(d / "authorized_keys"))
    for path in (host_key, client_key):
        os.chmod(path, 0o600)
    if os.geteuid() == 0:   # sshd started by root wants its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100
""")
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or
                   b"Server listening" in (d / "sshd.log").read_bytes(), "sshd start")
        assert proc.poll() is None, (d / "sshd.log").read_text()
        yield {"port": port, "username": getpass.getuser(), "known_hosts": None,
               "client_keys": [str(client_key)], "agent_path": None}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def cluster_kwargs(tmp_path, **kwargs):
    kwargs.setdefault("remote_python", sys.executable)   # nbcluster is installed for it
    kwargs.setdefault("scheduler_options", {"port": 0, "dashboard_port": -1})
    # the remote runtime directory is the login's (~/.nbcluster): keep the file in the test's
    kwargs["scheduler_options"].setdefault("connection_file", str(tmp_path / "conn.json"))
    return kwargs


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_tasks_run_and_data_moves_between_remote_workers(sshd, tmp_path):
    from nbcluster import SSHCluster

    with SSHCluster(["127.0.0.1"] * 3, connect_options=sshd,
                    worker_options={"nthreads": 2, "memory_limit": "3GiB", "memory_pause": None},
                    **cluster_kwargs(tmp_path)) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(cluster.workers) == 2
        with Client(cluster) as client:
            assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
            info = client.scheduler_info()["workers"]
            assert sorted(info) == sorted(cluster.workers)
            assert all(w["nthreads"] == 2 for w in info.values())
            assert all(w["identity"]["memory_limit"] == 3 * 2**30 for w in info.values())
            a, b = cluster.workers
            x = client.submit(bytes, 1_000_000, workers=[a])
            n = client.submit(len, x, workers=[b])
            assert n.result(timeout=30) == 1_000_000
            assert client.who_has([x, n]) == {x.key: [a], n.key: [b]}
        assert "SSHCluster" in repr(cluster) and a in cluster._repr_html_()


def test_scale_and_close_leave_nothing_running(sshd, tmp_path):
    from nbcluster import SSHCluster

    cluster = SSHCluster(["127.0.0.1", "127.0.0.1", "127.0.0.1"], connect_options=sshd,
                         **cluster_kwargs(tmp_path))
    with Client(cluster) as client:
        cluster.scale(4)
        assert len(cluster.workers) == 4
        assert len(client.scheduler_info()["workers"]) == 4
        assert client.gather(client.map(add, range(20), [1] * 20)) == list(range(1, 21))
        pids = [p["pid"] for p in cluster.remote_processes()]
        gone = [p["pid"] for p in cluster.remote_processes()][-3:]
        cluster.scale(1)
        assert len(cluster.workers) == 1
        assert not any(psutil.pid_exists(pid) for pid in gone)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1,
                   "the scheduler noticing retired workers")
        assert client.submit(add, 1, 1).result(timeout=30) == 2
        before = {p["pid"] for p in cluster.remote_processes() if p["role"] == "worker"}
        client.restart(timeout=30)                  # new worker processes on the same hosts
        after = {p["pid"] for p in cluster.remote_processes() if p["role"] == "worker"}
        assert len(after) == 1 and not before & after
        assert not any(psutil.pid_exists(pid) for pid in before)
        pids += list(after)
        assert client.submit(add, 2, 2).result(timeout=30) == 4
        adaptive = cluster.adapt(minimum=1, maximum=2, interval=0.05, wait_count=2)
        naps = client.map(time.sleep, [0.3] * 12)
        wait_until(lambda: len(cluster.workers) == 2, "adaptive scaling to add a worker")
        client.gather(naps)
        pids += [p["pid"] for p in cluster.remote_processes()]
        cluster.scale(1)                            # manual control ends adapting
        assert not adaptive.running and len(cluster.workers) == 1
    cluster.close()
    cluster.close()   # idempotent
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with pytest.raises(ClusterError, match="closed"):
        cluster.scale(2)


def test_auto_memory_is_the_hosts_memory_shared_among_its_workers(sshd, tmp_path):
    from nbcluster import SSHCluster

    total = psutil.virtual_memory().total          # the remote host is this machine
    with SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=sshd, n_workers_per_host=2,
                    **cluster_kwargs(tmp_path)) as cluster, Client(cluster) as client:
        def limits():
            return sorted(w["identity"]["memory_limit"]
                          for w in client.scheduler_info()["workers"].values())
        wait_until(lambda: len(limits()) == 2, "both workers")
        assert limits() == [total // 2] * 2
        cluster.add_worker()        # a third there: its share; running ones keep theirs
        wait_until(lambda: len(limits()) == 3, "the third worker")
        assert limits() == [total // 3, total // 2, total // 2]


def test_the_token_never_shows_on_a_command_line(sshd, tmp_path):
    from nbcluster import SSHCluster

    with SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=sshd,
                    **cluster_kwargs(tmp_path)) as cluster:
        procs = cluster.remote_processes()
        assert [p["role"] for p in procs] == ["scheduler", "worker"]
        for p in procs:
            line = cmdline(p["pid"])
            assert "--token-stdin" in line and "nbcluster" in line
            assert cluster.token not in line
            with open(f"/proc/{p['pid']}/environ", "rb") as f:
                assert cluster.token.encode() not in f.read()
            # nor on the command line of the sshd session or the shell that started it
            for parent in psutil.Process(p["pid"]).parents():
                assert cluster.token not in " ".join(parent.cmdline())


def test_a_forgotten_cluster_stops_its_processes(sshd, tmp_path):
    import gc

    from nbcluster import SSHCluster

    cluster = SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=sshd,
                         **cluster_kwargs(tmp_path))
    pids = [p["pid"] for p in cluster.remote_processes()]
    del cluster
    gc.collect()
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_a_bad_remote_python_names_the_host_and_shows_stderr(sshd, tmp_path):
    from nbcluster import SSHCluster

    with pytest.raises(ClusterError) as info:
        SSHCluster(["127.0.0.1"], connect_options=sshd,
                   **cluster_kwargs(tmp_path, remote_python="/nonexistent/python3"))
    message = str(info.value)
    assert "scheduler on 127.0.0.1" in message
    # the remote shell's own message (bash: "No such file or directory", dash: "not found")
    assert re.search(r"\n .*/nonexistent/python3.*(No such file|not found)", message), message
    assert "exit code 127" in message


def test_nbcluster_missing_on_the_host_says_to_install_it(sshd, tmp_path):
    from nbcluster import SSHCluster

    # -S: no site-packages, so this Python cannot import nbcluster
    with pytest.raises(ClusterError, match="(?s)No module named nbcluster.*nbcluster is not "
                                           "installed for .* on 127.0.0.1"):
        SSHCluster(["127.0.0.1"], connect_options=sshd,
                   **cluster_kwargs(tmp_path, remote_python=f"{sys.executable} -S"))


def test_a_silent_process_times_out_and_is_stopped(sshd, tmp_path):
    from nbcluster import SSHCluster

    # it also ignores SIGTERM, so stopping it takes the SIGKILL after close_timeout
    marker = f"nbcluster-test-{os.getpid()}-{free_port()}"
    python = (f"{sys.executable} -c 'import signal, time; signal.signal(signal.SIGTERM, "
              f"signal.SIG_IGN); time.sleep(60)  # {marker}'")
    start = time.monotonic()
    with pytest.raises(ClusterError, match="scheduler on 127.0.0.1 did not report its address "
                                           "within 2 s"):
        SSHCluster(["127.0.0.1"], connect_options=sshd, timeout=2, close_timeout=1,
                   **cluster_kwargs(tmp_path, remote_python=python))
    assert time.monotonic() - start < 20
    assert not [p for p in psutil.process_iter(["cmdline"])
                if marker in " ".join(p.info["cmdline"] or [])]


def test_a_wrong_port_names_the_host(sshd, tmp_path):
    from nbcluster import SSHCluster

    port = free_port()
    with pytest.raises(ConnectError, match=f"cannot connect to .*127.0.0.1:{port} over SSH"):
        SSHCluster(["127.0.0.1"], connect_options=dict(sshd, port=port),
                   **cluster_kwargs(tmp_path))


def test_a_refused_login_names_the_host_and_what_to_check(sshd, tmp_path):
    import asyncssh

    from nbcluster import SSHCluster

    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(ConnectError, match="127.0.0.1.*login refused.*client_keys"):
        SSHCluster(["127.0.0.1"], connect_options=dict(sshd, client_keys=[stranger]),
                   **cluster_kwargs(tmp_path))


def test_a_failing_worker_host_stops_the_scheduler_too(sshd, tmp_path):
    from nbcluster import SSHCluster

    # the second host (a worker) cannot be reached: the started scheduler must not linger
    bad = dict(sshd, port=free_port())
    with pytest.raises(ConnectError, match=f"127.0.0.1:{bad['port']}"):
        SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=[sshd, bad],
                   **cluster_kwargs(tmp_path))


def test_a_dead_worker_is_reported_and_replaced(sshd, tmp_path, caplog):
    from nbcluster import SSHCluster

    with SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=sshd,
                    **cluster_kwargs(tmp_path)) as cluster:
        victim = cluster.remote_processes()[1]
        with caplog.at_level(logging.WARNING, logger="nbcluster.deploy.ssh"):
            os.kill(victim["pid"], signal.SIGKILL)
            wait_until(lambda: cluster.restarts == 1, "the replacement of a killed worker")
        assert f"worker {victim['name']} on 127.0.0.1 exited with code -9" in caplog.text
        assert len(cluster.workers) == 1 and cluster.workers[0] != victim["address"]
        with Client(cluster) as client:
            assert client.submit(add, 41, 1).result(timeout=30) == 42


def test_a_dropped_connection_ends_the_remote_process(sshd, tmp_path, caplog):
    from nbcluster import SSHCluster

    # as when the notebook kernel dies: sshd hangs up the terminal and the process exits
    with SSHCluster(["127.0.0.1"], connect_options=sshd, n_workers_per_host=0,
                    **cluster_kwargs(tmp_path)) as cluster:
        pid = cluster.remote_processes()[0]["pid"]
        cluster._thread.loop.call_soon_threadsafe(cluster._scheduler.conn.abort)
        wait_until(lambda: not psutil.pid_exists(pid), "the remote scheduler ending")


def test_tls_with_files_copied_to_the_hosts(sshd, tmp_path):
    from nbcluster import SSHCluster
    from nbcluster.security import Security

    security = Security.temporary()
    with SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=sshd, security=security,
                    **cluster_kwargs(tmp_path)) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        assert all(w.startswith("tls://") for w in cluster.workers)
        remote_dir = cluster._scheduler._tls_dir
        assert oct(os.stat(remote_dir).st_mode & 0o777) == "0o700"
        with Client(cluster) as client:
            assert client.submit(add, 1, 1).result(timeout=30) == 2
    assert not os.path.exists(remote_dir)


def test_arguments_are_checked_before_connecting():
    from nbcluster import SSHCluster

    with pytest.raises(TypeError, match="list of host names"):
        SSHCluster("host-a")
    with pytest.raises(ValueError, match="connect_options has 1 entries for 2 hosts"):
        SSHCluster(["a", "b"], connect_options=[{}])
    with pytest.raises(ValueError, match="worker_options does not take memory"):
        SSHCluster(["a"], worker_options={"memory": 1})


def test_without_asyncssh_the_error_says_what_to_install(monkeypatch):
    from nbcluster import SSHCluster

    monkeypatch.setitem(sys.modules, "asyncssh", None)
    with pytest.raises(ImportError, match=r"pip install 'nbcluster\[ssh\]'"):
        SSHCluster(["127.0.0.1"])


def test_import_nbcluster_does_not_import_asyncssh():
    code = ("import sys, nbcluster; assert 'asyncssh' not in sys.modules; "
            "nbcluster.SSHCluster; assert 'asyncssh' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_cli_reads_the_token_from_stdin(tmp_path):
    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path))
    env.pop("NBCLUSTER_TOKEN", None)
    conn = tmp_path / "conn.json"
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster", "scheduler", "--token-stdin",
                             "--port", "0", "--dashboard-port", "-1", "--connection-file",
                             str(conn)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        proc.stdin.write(b"a-secret-from-stdin\n")
        proc.stdin.flush()
        for raw in proc.stdout:
            if raw.startswith(b"connection file"):
                break
        from nbcluster.config import read_connection_file

        assert read_connection_file(conn)[1] == "a-secret-from-stdin"
        assert "a-secret-from-stdin" not in cmdline(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
    empty = subprocess.run([sys.executable, "-m", "nbcluster", "worker", "tcp://127.0.0.1:1",
                            "--token-stdin"], input=b"", capture_output=True, env=env,
                           timeout=30)
    assert empty.returncode == 1 and b"--token-stdin" in empty.stderr
