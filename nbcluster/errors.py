"""The one error hierarchy of nbcluster.

::

    NBClusterError
    ├── CommError                      a connection failed or closed
    │   ├── ConnectError               could not reach an address (names it)
    │   └── AuthenticationError        the handshake failed (missing or wrong token)
    ├── ProtocolError                  a peer sent a malformed frame or message
    ├── SerializationError (TypeError) an argument or result cannot be pickled (names it)
    │   ├── PicklingError (pickle.PicklingError)      pickling failed
    │   └── UnpicklingError (pickle.UnpicklingError)  unpickling failed
    ├── TaskError                      base for failures that belong to one task
    │   ├── CancelledError             the future was cancelled (also concurrent.futures')
    │   ├── KilledWorkerError          the task killed too many workers
    │   ├── FutureLostError            a result can no longer be recovered
    │   ├── RemoteError                a remote exception that could not be re-created
    │   ├── TaskTimeoutError (TimeoutError)  the task ran longer than its ``timeout``
    │   └── TaskExpiredError           the task had not started by its ``expires``
    ├── ClusterError                   a cluster could not start or was used after close
    │   ├── JournalError               a scheduler's journal cannot be used (names the file)
    │   └── SchedulerLostError         a worker gave up on its scheduler (it did not come back)
    └── Retry                          raised inside a task to ask for another attempt

A task's own exception is never wrapped: ``future.result()`` raises it with its own type and the
remote traceback attached (as ``__traceback__`` where possible, and always as a note).
"""

from __future__ import annotations

import concurrent.futures
import pickle


class NBClusterError(Exception):
    """Base class of every error nbcluster raises itself."""


class CommError(NBClusterError, OSError):
    """A connection failed or was closed."""


class ConnectError(CommError):
    """Could not connect to an address."""


class AuthenticationError(CommError):
    """The peer did not prove knowledge of the cluster's token."""


class ProtocolError(NBClusterError):
    """A peer sent bytes that are not a valid message."""


class SerializationError(NBClusterError, TypeError):
    """An object could not be serialized or deserialized."""


class PicklingError(SerializationError, pickle.PicklingError):
    """An object could not be pickled (also caught as the standard library's)."""


class UnpicklingError(SerializationError, pickle.UnpicklingError):
    """Bytes could not be unpickled (also caught as the standard library's)."""


class TaskError(NBClusterError):
    """A failure that belongs to one task."""


class CancelledError(TaskError, concurrent.futures.CancelledError):
    """The future was cancelled."""


class KilledWorkerError(TaskError):
    """The task was running on too many workers that died."""


class FutureLostError(TaskError):
    """The result is gone and cannot be recomputed."""


class RemoteError(TaskError):
    """A remote exception whose original type could not be re-created here."""


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran longer than its ``timeout`` and was stopped."""


class TaskExpiredError(TaskError):
    """The task had not started by its ``expires`` time."""


class Retry(NBClusterError):
    """Raise inside a task to ask for another attempt, after ``delay`` seconds.

    It counts against ``retries`` when the task has a retry budget; without one it is allowed
    ``max_retries`` times (default 3)."""

    def __init__(self, delay: float = 0.0, reason: str = "", max_retries: int = 3) -> None:
        super().__init__(reason or f"retry requested (delay {delay:g} s)")
        self.delay = float(delay)
        self.max_retries = int(max_retries)

    def __reduce__(self):
        return (type(self), (self.delay, self.args[0] if self.args else "", self.max_retries))


class ClusterError(NBClusterError, RuntimeError):
    """A cluster or client could not start, or was used after it closed."""


class JournalError(ClusterError):
    """A scheduler's journal is damaged, of another format, or not a journal at all."""


class SchedulerLostError(ClusterError):
    """A worker gave up on its scheduler: it was lost and did not come back in time (a worker
    under ``nbcluster worker --nworkers`` that ends so is not replaced)."""


__all__ = [
    "NBClusterError",
    "CommError",
    "ConnectError",
    "AuthenticationError",
    "ProtocolError",
    "SerializationError",
    "PicklingError",
    "UnpicklingError",
    "TaskError",
    "CancelledError",
    "KilledWorkerError",
    "FutureLostError",
    "RemoteError",
    "TaskTimeoutError",
    "TaskExpiredError",
    "Retry",
    "ClusterError",
    "SchedulerLostError",
]
