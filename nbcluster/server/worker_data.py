"""The worker's data traffic: serving its values to peers and clients (GET_DATA, PUT_DATA),
and fetching the inputs its tasks need from peers.

Functions of the :class:`~nbcluster.server.worker.Worker` shell, on its event loop; what they
learn goes to the worker's state machine as events, like everything else the shell sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ..comm import Comm
from ..errors import SerializationError
from ..protocol import messages as m
from ..protocol.serialize import dump_value, load_value, sizeof
from .executor import exception_payload, result_error
from .spill import Spilled

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("nbcluster.worker")


# ---------------------------------------------------------------------- fetching inputs
async def fetch(worker: Worker, peer: str, keys: list[str]) -> None:
    """Get ``keys`` from ``peer`` in one transfer and store them."""
    state, data = worker.state, worker.data
    assert state is not None and worker.pool is not None and worker.scheduler is not None
    start = time.time()
    try:
        values, missing, errors = await worker.pool.get_data(peer, keys)
    except Exception as e:
        logger.info("fetch of %d keys from %s failed: %r", len(keys), peer, e)
        worker.apply(state.fetch_failed(peer, keys))
        return
    nbytes = {}
    for key, value in values.items():
        held = data.get(key)
        if held is not None:     # computed or fetched here meanwhile: keep that copy
            nbytes[key] = held.nbytes if type(held) is Spilled else sizeof(held)
            continue
        try:
            data[key] = obj = load_value(value)
        except Exception as e:
            errors[key] = f"cannot unpickle {key!r} from {peer}: {e}"
            continue
        nbytes[key] = sizeof(obj)
    stop = time.time()
    if nbytes:   # for the dashboard's task stream: one mark per transfer
        worker.scheduler.send(m.Transfers([(k, peer, start, stop, n) for k, n in nbytes.items()]))
    for key, text in errors.items():
        worker.apply(state.fetch_errored(key, exception_payload(SerializationError(text))))
    worker.apply(state.fetch_done(peer, nbytes, missing))


# ---------------------------------------------------------------------- serving values
def serve(worker: Worker, comm: Comm) -> None:
    """A peer or a client connected: answer its requests for data."""
    def on_get(msg: m.GetData) -> None:
        if any(type(worker.data.get(k)) is Spilled for k in msg.keys):
            asyncio.ensure_future(_get_data_from_disk(worker, comm, msg.request_id, msg.keys))
        else:
            comm.send(get_data(worker.data, msg.request_id, msg.keys))

    handlers: dict[type, Callable[[Any], None]] = {
        m.GetData: on_get,
        m.PutData: lambda msg: comm.send(put_data(worker, msg.request_id, msg.values)),
        m.Hello: lambda msg: None,
    }

    def on_batch(batch: list[m.Message]) -> None:
        for msg in batch:
            handler = handlers.get(type(msg))
            if handler is None:
                raise m.ProtocolError(f"{type(msg).__name__} is not accepted from a peer")
            handler(msg)

    comm.start(on_batch, lambda reason: None)


async def _get_data_from_disk(worker: Worker, comm: Comm, request_id: int,
                             keys: list[str]) -> None:
    """Some of the values asked for are on disk: read them off the event loop."""
    spilled = {k: v for k in keys if type(v := worker.data.get(k)) is Spilled}
    read = await asyncio.get_running_loop().run_in_executor(None, _read_spilled, spilled)
    comm.send(get_data(worker.data, request_id, keys, read))


def get_data(data: dict, request_id: int, keys: list[str],
             read: dict | None = None) -> m.Data:
    """The DATA reply: values as they travel, keys not here, and values that would not
    pickle (by key, as text)."""
    values, missing, errors = {}, [], {}
    for key in keys:
        if read is not None and key in read and key in data:
            if read[key] is None:            # its file went with the key meanwhile
                missing.append(key)
            else:
                values[key] = read[key]
            continue
        if key not in data:
            missing.append(key)
            continue
        try:
            value = data[key]
            values[key] = value.serialized() if type(value) is Spilled else \
                dump_value(value, what=f"the result of {key!r}")
        except SerializationError as e:
            errors[key] = str(e)
        except OSError:                      # a spill file removed under us
            missing.append(key)
        except BaseException as e:  # noqa: BLE001 - SystemExit from a __reduce__: a reply
            errors[key] = str(result_error(key, data.get(key), e))
    return m.Data(request_id, values, missing, errors)


def put_data(worker: Worker, request_id: int, values: dict) -> m.Reply:
    """A client scatters values here, unless a key names a task of this worker."""
    state, data = worker.state, worker.data
    assert state is not None
    refused = state.refuses_data(values)
    if refused:
        return m.Reply(request_id, False,
                f"{', '.join(map(repr, refused))} already name tasks on this worker")
    nbytes = {}
    for key, value in values.items():
        if type(data.get(key)) is Spilled:
            worker.spill.remove(data[key])
        data[key] = obj = load_value(value)
        nbytes[key] = sizeof(obj)
    worker.apply(state.data_added(nbytes))
    return m.Reply(request_id, True, nbytes)


def _read_spilled(spilled: dict) -> dict:
    """On a thread: the wire form of each spilled value, None if its file is gone."""
    read = {}
    for key, marker in spilled.items():
        try:
            read[key] = marker.serialized()
        except OSError:
            read[key] = None
    return read
