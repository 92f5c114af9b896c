"""The client side: Client, Future, wait, as_completed, executor, delayed. Never imports server."""

from .client import AsyncClient, Client, default_client
from .coordination import Event, Lock, Queue, Semaphore, Variable
from .delayed import Delayed, compute, delayed
from .future import Future
from .output import OutputMarker
from .structure import collect_futures as futures_of
from .waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait

__all__ = ["futures_of", "OutputMarker", "Client", "AsyncClient", "default_client", "Future", "Delayed", "delayed", "compute",
           "wait", "as_completed", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
           "Queue", "Variable", "Event", "Lock", "Semaphore"]
