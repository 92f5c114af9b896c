"""Tasks that submit tasks: ``nbcluster.get_client()``, ``secede()``, ``rejoin()``.

Inside a task, ``get_client()`` returns a Client connected to the task's scheduler with the
worker's token and security: one per worker, made by the first task that asks, shared by every
task of that worker, closed when the worker closes (not the worker's own connection: a client
like the notebook's). A task waiting on that client (``gather``, ``result``, ``wait``) gives
up its thread meanwhile, so a worker whose threads all wait on subtasks still runs them.

This module joins the client and server layers (which never import each other): the client
learns from it where an unpickled Future belongs and how a task's thread waits.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from .client import records
from .client.client import Client, default_client
from .client.future import Future
from .errors import ClusterError
from .server import task_threads

__all__ = ["get_client", "secede", "rejoin"]

_lock = threading.Lock()


def get_client(timeout: Any = 10.0) -> Client:
    """The client to submit from: in a task, one connected to its scheduler (shared by the
    worker's tasks); elsewhere the default client (the one made last)."""
    worker = task_threads.current_worker()
    if worker is None:
        try:
            return default_client()
        except ClusterError:
            raise ClusterError("get_client() outside a task returns the default client, and "
                               "there is none: create one with nbcluster.Client(...) first "
                               "(inside a task it returns a client of the task's "
                               "scheduler)") from None
    client = worker.setups.client
    if client is not None and not client.closed:
        return client
    with _lock:
        client = worker.setups.client
        if client is None or client.closed:
            if worker._closing:
                raise ClusterError(f"worker {worker.address} is closing: no client for its "
                                   "tasks")
            client = worker.setups.client = Client(
                worker.scheduler_address, token=worker.token, security=worker.security,
                timeout=timeout, set_as_default=False)
    return client


def secede() -> None:
    """Give up this task's thread: the worker may start another task meanwhile, and the
    scheduler counts this one against none of its threads. For a task about to wait long
    (on other tasks, or anything else); ``rejoin()`` takes a thread again. Waiting on
    ``get_client()`` (``gather``, ``result``) secedes by itself."""
    task_threads.secede()


def rejoin() -> None:
    """Wait until one of the worker's threads is free, and take its place (after
    ``secede()``; nothing happens if this task did not secede)."""
    task_threads.rejoin()


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    seceded = task_threads.secede()
    try:
        yield
    finally:
        if seceded:
            task_threads.rejoin()


def _wait_guard() -> Any:
    """How a thread waits for futures: seceded, in a task that holds its thread."""
    if task_threads.current() is None or task_threads.is_seceded():
        return None
    return _seceded()


def _client_here() -> Client:
    return get_client()


records.wait_hook = _wait_guard
Future._client_here = staticmethod(_client_here)   # type: ignore[assignment]
