import gc
import os
import threading

import psutil
import pytest

from nbcluster import Client, LocalCluster

# Dashboard links depend on these (JupyterHub sets the first in its terminals): the tests
# expect plain links unless a test sets them itself.
for _name in ("JUPYTERHUB_SERVICE_PREFIX", "NBCLUSTER_DASHBOARD_LINK"):
    os.environ.pop(_name, None)


def _our_threads():
    return {t for t in threading.enumerate() if t.name.startswith("nbcluster")}


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test cleans up the threads and processes it starts."""
    before_threads = _our_threads()
    before_children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    gc.collect()
    deadline = 5.0
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        threads = _our_threads() - before_threads
        children = [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in before_children and p.status() != psutil.STATUS_ZOMBIE]
        if not threads and not children:
            break
        for t in threads:
            t.join(0.05)
        psutil.wait_procs(children, timeout=0.05)
    else:
        described = []
        for p in children:
            try:
                described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.Error:
                pass
        pytest.fail(f"left behind threads {sorted(t.name for t in threads)} "
                    f"and processes {described}")


@pytest.fixture
def inproc_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        yield cluster


@pytest.fixture
def client(inproc_cluster):
    with Client(inproc_cluster) as c:
        yield c


@pytest.fixture
def proc_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        yield cluster


@pytest.fixture
def pclient(proc_cluster):
    with Client(proc_cluster) as c:
        yield c


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    """Connection files go to the test's own directory."""
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("NBCLUSTER_TOKEN", raising=False)
    yield
