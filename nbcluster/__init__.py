"""nbcluster: a Jupyter-first distributed futures system."""

from . import errors
from .client import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, AsyncClient, Client,
                     Delayed, Future, as_completed, compute, default_client, delayed, futures_of, wait)
from .client import Event, Lock, Queue, Semaphore, Variable
from .deploy import LocalCluster
from .errors import CancelledError, KilledWorkerError, NBClusterError
from .canvas import Signature, chain, chord, group, s
from .errors import Retry, TaskExpiredError, TaskTimeoutError
from .progress import progress
from .task_client import get_client, rejoin, secede

__version__ = "0.1.0"

Client._default_cluster_factory = LocalCluster
Client._progress_hook = staticmethod(lambda futures: progress(futures, wait=False))


def _dashboard_widget(client, **kwargs):
    from .dashboard.widget import dashboard_widget   # bokeh is imported only when asked

    return dashboard_widget(client, **kwargs)


Client._dashboard_factory = staticmethod(_dashboard_widget)


def load_ipython_extension(ip) -> None:
    """``%load_ext nbcluster``: the %cluster magic, widgets, reprs, task output in cells."""
    from .jupyter import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip) -> None:
    from .jupyter import unload_ipython_extension as unload

    unload(ip)


def _jupyter_labextension_paths() -> list[dict]:
    """The prebuilt JupyterLab extension, for ``jupyter labextension develop .`` (what an
    editable install uses; a regular install puts it in share/jupyter/labextensions)."""
    return [{"src": "labextension", "dest": "nbcluster"}]


def __getattr__(name: str):
    if name == "SSHCluster":   # imported when first used (asyncssh only when one starts)
        from .deploy.ssh import SSHCluster

        return SSHCluster
    if name == "KubeCluster":   # imported when first used (the kubernetes client with it)
        from .deploy.kube import KubeCluster

        return KubeCluster
    if name in _JOBQUEUE:      # the batch systems (nothing to install: their commands are used)
        from .deploy import jobqueue

        return getattr(jobqueue, name)
    raise AttributeError(f"module 'nbcluster' has no attribute {name!r}")


_JOBQUEUE = ("SLURMCluster", "PBSCluster", "SGECluster", "LSFCluster")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"SSHCluster", "KubeCluster", *_JOBQUEUE})


def fire_and_forget(futures) -> None:
    """Let these tasks run to the end even when no client holds their futures."""
    found = futures_of(futures)
    by_client: dict = {}
    for f in found:
        by_client.setdefault(id(f.client), (f.client, []))[1].append(f)
    for client, futs in by_client.values():
        client.fire_and_forget(futs)


__all__ = [
    "Client", "AsyncClient", "LocalCluster", "SSHCluster", "SLURMCluster", "PBSCluster", "SGECluster",
    "LSFCluster", "Future", "Delayed", "delayed", "compute", "wait",
    "as_completed", "fire_and_forget", "futures_of", "progress", "Signature", "s", "chain", "group", "chord",
    "Retry", "TaskTimeoutError", "TaskExpiredError", "default_client", "errors", "NBClusterError",
    "CancelledError", "KilledWorkerError", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
    "KubeCluster",
    "Queue", "Variable", "Event", "Lock", "Semaphore",
    "get_client", "secede", "rejoin",
]
