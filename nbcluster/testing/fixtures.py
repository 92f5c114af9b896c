"""The fixtures of nbcluster's tests, as a pytest plugin: in a ``conftest.py``,
``pytest_plugins = ["nbcluster.testing.fixtures"]``.

- ``inproc_cluster``: a LocalCluster of two one-thread workers in this process;
  ``proc_cluster``: the same with worker processes;
- ``cluster``: ``inproc_cluster``, or ``proc_cluster`` for tests marked
  ``@pytest.mark.processes`` (a module may set ``pytestmark = pytest.mark.processes``);
- ``client``: a Client of ``cluster``; ``pclient``: a Client of ``proc_cluster``;
- ``no_leftovers`` (autouse): each test ends every ``nbcluster*`` thread and every child
  process it started, or fails (and the processes are killed);
- a test passes only if no state machine broke an invariant meanwhile: with
  ``NBCLUSTER_VALIDATE=1`` the shells check after every batch, and a broken rule is logged (by
  worker and scheduler processes on their stderr, which pytest captures) where this plugin
  finds it.
"""

from __future__ import annotations

import gc
import re
import threading

import psutil
import pytest

from nbcluster import Client, LocalCluster

from .polling import wait_until

BROKEN = re.compile(r"InvariantError: invariant broken: [^\n]*")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "processes: the cluster and client fixtures run worker "
                                       "processes (real TCP) instead of in-process workers")


@pytest.fixture
def inproc_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        yield cluster


@pytest.fixture
def proc_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        yield cluster


@pytest.fixture
def cluster(request):
    processes = request.node.get_closest_marker("processes") is not None
    return request.getfixturevalue("proc_cluster" if processes else "inproc_cluster")


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        yield c


@pytest.fixture
def pclient(proc_cluster):
    with Client(proc_cluster) as c:
        yield c


# ---------------------------------------------------------------------- clean-up
def _our_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("nbcluster")}


def _new_children(before: set) -> list:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test cleans up the threads and processes it starts."""
    before_threads = _our_threads()
    before_children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    gc.collect()
    left: dict = {}

    def clean() -> bool:
        left["threads"] = _our_threads() - before_threads
        left["children"] = _new_children(before_children)
        return not left["threads"] and not left["children"]

    try:
        wait_until(clean, "the test's threads and processes to end", timeout=5.0)
    except AssertionError:
        described = []
        for p in left["children"]:
            try:
                described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.Error:
                pass
        pytest.fail(f"left behind threads {sorted(t.name for t in left['threads'])} "
                    f"and processes {described}")


# ---------------------------------------------------------------------- broken invariants
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped:
        return report
    found = [hit for title, text in report.sections if title.endswith(report.when)
             for hit in BROKEN.findall(text)]
    if found:
        broken = ("a state machine broke an invariant during this test (the captured output "
                  "has the traceback):\n  " + "\n  ".join(dict.fromkeys(found)))
        # what failed next (often a timeout: the peer of the broken state went away) follows
        report.longrepr = broken if report.passed else f"{broken}\n\nthen:\n{report.longrepr}"
        report.outcome = "failed"
    return report
