"""``nbcluster worker --nworkers N`` (a supervisor replacing workers that die), and what the
command-line processes advertise: ``--contact-address``, ``--interface``, wildcard binds.
Real processes on 127.0.0.1 only."""

import os
import signal
import socket
import subprocess
import sys
import threading
from collections import namedtuple
from operator import add

import psutil
import pytest

from nbcluster import Client
from nbcluster.comm.addressing import choose_contact, interface_ip, route_ip
from nbcluster.config import MEMORY_EXIT_CODE, SCHEDULER_LOST_EXIT_CODE, find_token
from nbcluster.errors import ConnectError
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- pure choices
def test_a_wildcard_bind_advertises_the_address_that_routes_to_the_peer():
    assert choose_contact("tcp://0.0.0.0:4000", None, "10.1.2.3") == "tcp://10.1.2.3:4000"
    assert choose_contact("tcp://:::4000", None, "fd00::5") == "tcp://[fd00::5]:4000"
    assert choose_contact("tls://0.0.0.0:4000", None, "10.1.2.3") == "tls://10.1.2.3:4000"
    # no route found: the bind as it is; a specific bind: as it is
    assert choose_contact("tcp://0.0.0.0:4000", None, None) == "tcp://0.0.0.0:4000"
    assert choose_contact("tcp://127.0.0.1:4000", None, "10.1.2.3") == "tcp://127.0.0.1:4000"
    assert choose_contact("inproc://w-1", "tcp://h:1", None) == "inproc://w-1"


def test_a_contact_address_wins_and_its_port_0_means_the_bound_one():
    assert choose_contact("tcp://0.0.0.0:4000", "tcp://gw.example:7000", "10.1.2.3") == \
        "tcp://gw.example:7000"
    assert choose_contact("tcp://127.0.0.1:4000", "tcp://node7:0", None) == "tcp://node7:4000"
    for bad, why in [("node7:4000", "expected tcp://HOST:PORT"), ("tcp://node7", "expected"),
                     ("tcp://0.0.0.0:1", "wildcard nobody can connect to"),
                     ("tls://node7:1", "speaks tcp://")]:
        with pytest.raises(ConnectError, match=why):
            choose_contact("tcp://127.0.0.1:4000", bad, None)


def test_the_route_to_loopback_is_loopback():
    assert route_ip("127.0.0.1") == "127.0.0.1"


def test_an_unknown_interface_is_refused_naming_those_there_are():
    Addr = namedtuple("Addr", "family address")
    addrs = {"lo": [Addr(socket.AF_INET, "127.0.0.1")], "eth0": [Addr(socket.AF_INET6, "fe80::1")],
             "ib0": [Addr(socket.AF_INET, "10.0.0.7"), Addr(socket.AF_INET6, "fe80::2")]}
    assert interface_ip("ib0", addrs) == "10.0.0.7"
    with pytest.raises(ValueError, match="'eth1': no such network interface here; there are "
                                         "eth0, ib0, lo"):
        interface_ip("eth1", addrs)
    with pytest.raises(ValueError, match="'eth0' has no IPv4 address; interfaces that have one: "
                                         "ib0, lo"):
        interface_ip("eth0", addrs)
    assert interface_ip("lo") == "127.0.0.1"        # this machine's


def test_what_an_exit_code_says_and_the_back_off():
    from nbcluster.deploy.supervisor import MAX_BACKOFF, STABLE_SECONDS, backoff, exit_reason

    assert exit_reason(0)[1] is False                               # retired / closed
    assert exit_reason(SCHEDULER_LOST_EXIT_CODE) == ("gave up on its scheduler", False)
    assert exit_reason(MEMORY_EXIT_CODE) == ("went over its memory limit", True)
    why, replace = exit_reason(-signal.SIGKILL)
    assert replace and "SIGKILL" in why and "out-of-memory" in why
    assert exit_reason(1) == ("exited with code 1", True)
    assert backoff(STABLE_SECONDS, 8.0) == 0.0          # lived long: at once
    delays = [0.0]
    for _ in range(10):                                 # dying young: doubling, bounded
        delays.append(backoff(0.1, delays[-1]))
    assert delays[1:4] == [1.0, 2.0, 4.0] and max(delays) == MAX_BACKOFF == delays[-1]


# --------------------------------------------------------------------------- processes
@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env.pop("NBCLUSTER_TOKEN", None)
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", env["NBCLUSTER_RUNTIME_DIR"])
    return env


class Proc:
    """A command-line process whose stderr is collected (and looked through) as it comes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "nbcluster", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream, lines):
        for raw in stream:
            lines.append(raw.decode(errors="replace"))

    def line(self, start, where="out"):
        lines = self.out if where == "out" else self.err
        wait_until(lambda: any(x.startswith(start) for x in lines) or self.proc.poll() is not None,
                   f"a line {start!r}", timeout=30)
        found = [x for x in lines if x.startswith(start)]
        assert found, "".join(self.err)
        return found[0].strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


def scheduler(procs, env, *args):
    s = Proc(["scheduler", "--port", "0", "--dashboard-port", "-1", *args], env)
    procs.append(s)
    return s, s.line("nbcluster scheduler at").rsplit(" ", 1)[1]


def supervisor(procs, env, address, *args):
    w = Proc(["worker", address, *args], env)
    procs.append(w)
    return w


def children(proc):
    return psutil.Process(proc.proc.pid).children()


def by_pid(client):
    return {w["identity"]["pid"]: (a, w) for a, w in client.scheduler_info()["workers"].items()}


def test_nworkers_runs_and_replaces_workers_and_sigterm_stops_them(cli_env, procs):
    _, address = scheduler(procs, cli_env)
    sup = supervisor(procs, cli_env, address, "--nworkers", "2", "--nthreads", "2",
                     "--name", "w", "--memory-limit", "1GiB", "--queues", "default,high")
    with Client(address) as client:
        client.wait_for_workers(2, timeout=30)
        workers = by_pid(client)
        assert sorted(w["name"] for _, w in workers.values()) == ["w-0", "w-1"]
        assert all(w["nthreads"] == 2 and w["identity"]["memory_limit"] == 2**30
                   and w["identity"]["queues"] == ["default", "high"]
                   for _, w in workers.values())
        kids = children(sup)
        assert sorted(p.pid for p in kids) == sorted(workers)
        token = find_token(address)
        assert token
        for p in kids:      # the token reached them on stdin, not in their argv or env
            cmdline = " ".join(p.cmdline())
            assert "--token-stdin" in cmdline and "--supervised" in cmdline
            assert token not in cmdline and token not in str(p.environ())
        # a worker killed (as the OOM killer does) is replaced, under the same name
        victim = kids[0].pid
        victim_name = workers[victim][1]["name"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(w := by_pid(client)) == 2 and victim not in w,
                   "a replacement", timeout=30)
        assert sorted(w["name"] for _, w in by_pid(client).values()) == ["w-0", "w-1"]
        assert any(f"worker {victim_name}" in x and "was killed by SIGKILL" in x
                   and "starting a replacement in 1 s" in x for x in sup.err), "".join(sup.err)
        assert client.gather(client.map(add, range(50), range(50))) == \
            [2 * i for i in range(50)]
        kids = children(sup)
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(20) == 0
        psutil.wait_procs(kids, timeout=10)
        assert not any(p.is_running() for p in kids)
        wait_until(lambda: not client.scheduler_info()["workers"], "the workers to go")
    assert "Traceback" not in "".join(sup.err)


def test_workers_do_not_outlive_a_killed_supervisor(cli_env, procs):
    _, address = scheduler(procs, cli_env)
    sup = supervisor(procs, cli_env, address, "--nworkers", "2")
    with Client(address) as client:
        client.wait_for_workers(2, timeout=30)
        kids = children(sup)
        assert len(kids) == 2
        sup.proc.kill()
        _, alive = psutil.wait_procs(kids, timeout=15)
        assert not alive, "workers outlived their supervisor"
        wait_until(lambda: not client.scheduler_info()["workers"], "the workers to go")


def _exit_soon(code):
    def go():
        import os
        import threading

        threading.Timer(0.1, os._exit, [code]).start()
    return go


def test_a_worker_that_ended_for_good_is_not_replaced(cli_env, procs):
    sched, address = scheduler(procs, cli_env)
    sup = supervisor(procs, cli_env, address, "--nworkers", "3", "--reconnect-timeout", "1s")
    with Client(address) as client:
        client.wait_for_workers(3, timeout=30)
        first, second, third = sorted(client.scheduler_info()["workers"])
        client.run(_exit_soon(0), workers=[first])          # as a retired worker exits
        client.run(_exit_soon(3), workers=[second])         # a crash: replaced
        wait_until(lambda: len(w := client.scheduler_info()["workers"]) == 2
                   and first not in w and second not in w, "one replacement", timeout=30)
        assert any("exited with code 3; starting a replacement" in x for x in sup.err)
        assert any("ended (it retired, or its scheduler closed it" in x
                   and "replacement" not in x for x in sup.err), "".join(sup.err)
    # the scheduler gone for good: they give up; none is replaced, and the supervisor exits
    sched.proc.kill()
    assert sup.proc.wait(30) == 1, "".join(sup.err)
    err = "".join(sup.err)
    assert "gave up on the scheduler at " + address in err
    assert err.count("starting a replacement") == 1 and "Traceback" not in err


def test_nworkers_1_is_the_worker_itself(cli_env, procs):
    _, address = scheduler(procs, cli_env)
    worker = supervisor(procs, cli_env, address)
    with Client(address) as client:
        client.wait_for_workers(1, timeout=30)
        assert list(by_pid(client)) == [worker.proc.pid]
        assert not children(worker)


@pytest.mark.parametrize("args, message", [
    (["--nworkers", "0"], "--nworkers must be at least 1, got 0"),
    (["--interface", "no-such-nic"], "'no-such-nic': no such network interface here; there "
                                     "are "),
    (["--interface", "lo", "--host", "127.0.0.1"], "give --host or --interface, not both"),
    (["--contact-address", "node7:80"], "expected tcp://HOST:PORT"),
    (["--contact-address", "tcp://0.0.0.0:0"], "a wildcard nobody can connect to"),
])
def test_bad_worker_options_are_refused_saying_why(cli_env, args, message):
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "worker", "tcp://127.0.0.1:9",
                           *args], capture_output=True, text=True, env=cli_env, timeout=30)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_interface_and_contact_address_are_what_the_scheduler_and_workers_advertise(
        cli_env, procs):
    from nbcluster.config import read_connection_file

    sched, address = scheduler(procs, cli_env, "--interface", "lo",
                               "--contact-address", "tcp://localhost:0")
    port = int(address.rsplit(":", 1)[1])
    assert address == f"tcp://localhost:{port}"        # the contact host, the bound port
    path = sched.line("connection file").rsplit(" ", 1)[1]
    assert read_connection_file(path)[0] == address
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        worker_port = s.getsockname()[1]
    supervisor(procs, cli_env, address, "--interface", "lo", "--port", str(worker_port),
               "--contact-address", f"tcp://localhost:{worker_port}")
    supervisor(procs, cli_env, address, "--interface", "lo", "--nworkers", "2")
    with Client(address) as client:
        client.wait_for_workers(3, timeout=30)
        addresses = sorted(client.scheduler_info()["workers"])
        assert f"tcp://localhost:{worker_port}" in addresses
        assert sum(a.startswith("tcp://127.0.0.1:") for a in addresses) == 2
        assert set(client.run(os.getpid)) == set(addresses)
        assert client.gather(client.map(add, range(30), range(30))) == [2 * i for i in range(30)]


def test_workers_that_retire_at_their_lifetime_are_not_replaced(cli_env, procs):
    _, address = scheduler(procs, cli_env)
    sup = supervisor(procs, cli_env, address, "--nworkers", "2", "--lifetime", "1s",
                     "--lifetime-grace", "5s")
    with Client(address) as client:
        client.wait_for_workers(2, timeout=30)
        kids = children(sup)
        assert all("--lifetime=1s" in p.cmdline() for p in kids)
    assert sup.proc.wait(30) == 0, "".join(sup.err)
    err = "".join(sup.err)
    assert err.count("ended (it retired") == 2 and "replacement" not in err, err
