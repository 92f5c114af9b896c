"""Adapters that give nbcluster and dask.distributed one common interface.

Every workload is written once against :class:`System`; the two subclasses
only translate calls.  An adapter imports its library in ``__init__`` so a
missing or broken engine shows up as one clean error per benchmark child.

Cluster shape, identical for both systems: a scheduler, 2 worker processes
with 1 thread each, on 127.0.0.1.
"""

import contextlib
import os
import shutil
import socket
import sys
import time

from . import tasks

N_WORKERS = 2
THREADS_PER_WORKER = 1
HOST = "127.0.0.1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout, proc=None):
    """Wait until something accepts TCP connections on HOST:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout}s")


class System:
    name = "?"

    # ---- life cycle -------------------------------------------------------
    def local_cluster(self):
        """A new LocalCluster with the standard shape (a context manager)."""
        raise NotImplementedError

    def client(self, cluster_or_address):
        raise NotImplementedError

    @contextlib.contextmanager
    def cluster_and_client(self):
        with self.local_cluster() as cluster, self.client(cluster) as client:
            yield cluster, client

    # ---- task API -----------------------------------------------------------
    def submit(self, client, fn, *args, workers=None):
        raise NotImplementedError

    def map(self, client, fn, *iterables):
        return client.map(fn, *iterables)

    def gather(self, client, futures):
        return client.gather(futures)

    def run(self, client, fn):
        return client.run(fn)

    def worker_addresses(self, client):
        return sorted(self.run(client, tasks.noop))

    def wait_for_workers(self, client, n, timeout=60.0):
        """Poll ``client.run`` until n workers answer.

        Errors while polling are retried (a cluster with no worker yet may
        answer ``run`` with an error); the last one is raised at the timeout.
        """
        deadline = time.monotonic() + timeout
        got, last_exc = [], None
        while True:
            try:
                got = self.worker_addresses(client)
                last_exc = None
                if len(got) >= n:
                    return got
            except Exception as exc:
                last_exc = exc
            if time.monotonic() > deadline:
                if last_exc is not None:
                    raise last_exc
                raise TimeoutError(f"only {len(got)} of {n} workers after {timeout}s")
            time.sleep(0.1)

    def wait_scheduler_tasks(self, client, n, timeout=120.0):
        """Wait until the scheduler holds >= n tasks, if the system can tell.

        Returns True if it was checked, False if the system has no such query.
        """
        return False

    # ---- command line (W8) -----------------------------------------------
    def scheduler_cmd(self, port):
        raise NotImplementedError

    def worker_cmd(self, address):
        raise NotImplementedError

    # ---- description ------------------------------------------------------
    def versions(self):
        raise NotImplementedError


class DaskSystem(System):
    """dask.distributed with default submit options (``pure=True``).

    The workloads give every task unique arguments, so dask's key hashing
    never returns a cached result in place of running the task.
    """

    name = "dask"

    def __init__(self):
        import dask
        import distributed

        self.dask = dask
        self.distributed = distributed

    def local_cluster(self):
        return self.distributed.LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=THREADS_PER_WORKER,
            processes=True,
            host=HOST,
            dashboard_address=None,  # no bokeh server: not part of the engine
        )

    def client(self, cluster_or_address):
        return self.distributed.Client(cluster_or_address)

    def submit(self, client, fn, *args, workers=None):
        if workers is None:
            return client.submit(fn, *args)
        return client.submit(fn, *args, workers=list(workers), allow_other_workers=False)

    def wait_scheduler_tasks(self, client, n, timeout=120.0):
        deadline = time.monotonic() + timeout
        while client.run_on_scheduler(tasks.dask_scheduler_task_count) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"dask scheduler holds fewer than {n} tasks after {timeout}s")
            time.sleep(0.1)
        return True

    def scheduler_cmd(self, port):
        return [sys.executable, "-m", "distributed.cli.dask_scheduler",
                "--host", HOST, "--port", str(port), "--no-dashboard"]

    def worker_cmd(self, address):
        # --no-nanny: the worker is the process we start (nbcluster's CLI
        # worker is assumed to have no nanny either).
        return [sys.executable, "-m", "distributed.cli.dask_worker", address,
                "--nthreads", str(THREADS_PER_WORKER), "--no-nanny",
                "--no-dashboard", "--host", HOST]

    def versions(self):
        return {"dask": self.dask.__version__, "distributed": self.distributed.__version__}


class NbclusterSystem(System):
    """nbcluster, through the public API that mirrors dask's.

    Assumed: ``LocalCluster(n_workers=, threads_per_worker=, processes=)``
    (listening on 127.0.0.1 by default), ``Client(cluster | address)``,
    ``client.submit(fn, *args, workers=[addr])``, ``client.map(fn, *iterables)``,
    ``client.gather(list)``, ``client.run(fn) -> {address: result}``,
    futures nested in a list argument resolved (W3), and the CLI
    ``nbcluster scheduler --host H --port P`` / ``nbcluster worker ADDR --nthreads 1``.
    """

    name = "nbcluster"

    def __init__(self):
        import nbcluster

        self.nbcluster = nbcluster
        # Touch the public names now, so a half-built package fails here.
        self.LocalCluster = nbcluster.LocalCluster
        self.Client = nbcluster.Client

    def local_cluster(self):
        return self.LocalCluster(
            n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER, processes=True
        )

    def client(self, cluster_or_address):
        return self.Client(cluster_or_address)

    def submit(self, client, fn, *args, workers=None):
        if workers is None:
            return client.submit(fn, *args)
        return client.submit(fn, *args, workers=list(workers))

    def _cli(self):
        # Same interpreter as dask's CLI processes (python -m ...); the
        # console script (maybe a pyenv shim) only if there is no __main__.
        import importlib.util

        if importlib.util.find_spec("nbcluster.__main__") is not None:
            return [sys.executable, "-m", "nbcluster"]
        exe = shutil.which("nbcluster")
        return [exe] if exe else [sys.executable, "-m", "nbcluster"]

    def scheduler_cmd(self, port):
        return self._cli() + ["scheduler", "--host", HOST, "--port", str(port)]

    def worker_cmd(self, address):
        return self._cli() + ["worker", address, "--nthreads", str(THREADS_PER_WORKER)]

    def versions(self):
        v = getattr(self.nbcluster, "__version__", None)
        if v is None:
            try:
                from importlib.metadata import version

                v = version("nbcluster")
            except Exception:
                v = "unknown"
        return {"nbcluster": v}


class NbclusterJournalSystem(NbclusterSystem):
    """nbcluster with the scheduler's journal on (issue 15): every accepted task written to
    SQLite (WAL) before anything acknowledges it. A new journal file per cluster."""

    name = "nbcluster-journal"

    def _journal(self):
        import tempfile

        folder = tempfile.mkdtemp(prefix="nbcluster-bench-journal-")
        return os.path.join(folder, "journal.sqlite")

    def local_cluster(self):
        return self.LocalCluster(n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER,
                                 processes=True, journal=self._journal())

    def scheduler_cmd(self, port):
        return super().scheduler_cmd(port) + ["--journal", self._journal()]


SYSTEMS = {"nbcluster": NbclusterSystem, "nbcluster-journal": NbclusterJournalSystem,
           "dask": DaskSystem}


def make_system(name):
    return SYSTEMS[name]()


def child_env():
    """Environment for any process we start: repo root on PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    parts = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env, root
