"""A notebook's cluster session: the cluster and client that ``%cluster`` and the cluster widget
drive. Thread-safe: JupyterLab may run a widget's button handler while a cell is running."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..dashboard.links import register_remote, through_jupyter, unregister_remote
from ..deploy.cluster import Cluster
from .models import ClusterSnapshot, client_closed, remover


class SessionError(Exception):
    """A user-facing problem with the session (one line, shown without a traceback)."""


class ClusterSession:
    """Owns (or borrows) a cluster and a Client, and knows how to describe them."""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.client: Any = None
        self.own_cluster = False
        self.adopted = False        # a client made by hand in the notebook, not by %cluster
        self._remote_dashboard: str | None = None   # registered by %cluster connect
        self._lock = threading.RLock()
        self._on_stop: list[Callable[[], None]] = []
        self._on_change: list[Callable[[], object]] = []

    # ------------------------------------------------------------------ life cycle
    @property
    def running(self) -> bool:
        client = self.client
        return client is not None and not client_closed(client)

    def start(self, n_workers: int | None = None, threads_per_worker: int = 1,
              processes: bool = True, memory_limit: Any = "auto",
              journal: str | None = None) -> Any:
        from ..deploy import LocalCluster

        return self._own(lambda: LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
            memory_limit=memory_limit, journal=journal), "the cluster")

    def start_batch(self, system: str, jobs: int = 0, **options: Any) -> Any:
        """A batch-system cluster (``system``: slurm, pbs, sge or lsf) with ``jobs`` jobs
        submitted, and its client (the jobs wait in the queue: nothing waits for them)."""
        from ..deploy import jobqueue

        classes = {"slurm": jobqueue.SLURMCluster, "pbs": jobqueue.PBSCluster,
                   "sge": jobqueue.SGECluster, "lsf": jobqueue.LSFCluster}
        return self._own(lambda: classes[system](jobs=jobs, **options),
                         f"the {system} cluster")

    def _own(self, make: Callable[[], Any], what: str) -> Any:
        """Start a cluster of this session's own with ``make()``, and its client."""
        from ..client import Client

        with self._lock:
            self._check_free()
            try:
                cluster = make()
            except (ValueError, TypeError) as e:
                raise SessionError(str(e)) from None
            except Exception as e:  # noqa: BLE001
                raise SessionError(f"could not start {what}: {e}") from None
            try:
                client = Client(cluster)
            except Exception as e:  # noqa: BLE001
                cluster.close()
                raise SessionError(f"could not connect to the new cluster: {e}") from None
            self.cluster, self.client, self.own_cluster = cluster, client, True
            self.adopted = False
            return client

    def connect(self, address: str, token: str | None = None) -> Any:
        from ..client import Client

        with self._lock:
            self._check_free()
            try:
                client = Client(address, token=token)
            except Exception as e:  # noqa: BLE001
                raise SessionError(f"could not connect to {address}: {e}") from None
            self.cluster, self.client, self.own_cluster = None, client, False
            self.adopted = False
            # its dashboard, if on another machine, may be proxied by Jupyter's server extension
            self._remote_dashboard = register_remote(client.dashboard_link, address)
            return client

    def adopt(self, client: Any) -> None:
        """Use a client made elsewhere (``client = Client(...)`` in a cell)."""
        with self._lock:
            if self.running:
                return
            self.client = client
            self.cluster = client.cluster
            self.own_cluster = False
            self.adopted = True

    def _check_free(self) -> None:
        if self.adopted:        # %cluster start/connect replaces a hand-made client (kept open)
            self.client = self.cluster = None
            self.adopted = False
        if self.running:
            raise SessionError(f"a cluster is already running ({self.client.scheduler_address}); "
                               "use %cluster stop first")

    def require(self) -> Any:
        if not self.running:
            raise SessionError("no cluster: start one with %cluster start "
                               "(or %cluster connect ADDRESS)")
        return self.client

    def scale(self, n: int) -> None:
        with self._lock:
            self.require()
            cluster = self.cluster
            if not isinstance(cluster, Cluster):
                raise SessionError("this client is connected to a cluster it did not start; "
                                   "scale it where it was started")
            if not isinstance(n, int) or n < 0:
                raise SessionError(f"scale needs a number of workers >= 0, got {n!r}")
            try:
                cluster.scale(n)
            except Exception as e:  # noqa: BLE001
                raise SessionError(f"could not scale to {n} workers: {e}") from None
            if getattr(cluster, "job_counts", None) is None:   # batch jobs may sit queued
                self._wait_for_workers(n)
        self._changed()

    def _wait_for_workers(self, n: int, timeout: float = 10.0) -> None:
        """Until the scheduler lists ``n`` workers (a new worker registers just after it
        reports its address), so the next status shows them. Bounded; never raises."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            try:
                if len(self.client.scheduler_info().get("workers", {})) == n:
                    return
            except Exception:  # noqa: BLE001
                return
            pause.wait(0.02)

    def stop(self) -> bool:
        """Close the client (and the cluster when this session started it). False if idle."""
        with self._lock:
            client, cluster = self.client, self.cluster
            if client is None:
                return False
            self.client = self.cluster = None
            unregister_remote(self._remote_dashboard)
            self._remote_dashboard = None
            try:
                client.close()
            finally:
                if cluster is not None and self.own_cluster:
                    cluster.close()
            self.own_cluster = False
        for fn in list(self._on_stop):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
        return True

    # ------------------------------------------------------------------ describing
    def snapshot(self) -> ClusterSnapshot:
        client = self.client
        if client is None or client_closed(client):
            return ClusterSnapshot(closed=True)
        info = client.scheduler_info()
        cluster = self.cluster
        if cluster is None:
            kind = "remote"
        else:
            kind = cluster.kind if isinstance(cluster, Cluster) else ""
        snap = ClusterSnapshot.from_info(info, dashboard_link=self.dashboard_link, kind=kind)
        snap.jobs = dict(getattr(cluster, "job_counts", None) or {})
        return snap

    @property
    def dashboard_link(self) -> str | None:
        client = self.client
        link = getattr(client, "dashboard_link", None) if client is not None else None
        return through_jupyter(link, self._remote_dashboard)   # remote, on a hub: proxied

    @property
    def can_scale(self) -> bool:
        return isinstance(self.cluster, Cluster)

    def on_stop(self, fn: Callable[[], None]) -> Callable[[], None]:
        self._on_stop.append(fn)
        return remover(self._on_stop, fn)

    def on_change(self, fn: Callable[[], object]) -> Callable[[], None]:
        self._on_change.append(fn)
        return remover(self._on_change, fn)

    def _changed(self) -> None:
        for fn in list(self._on_change):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
