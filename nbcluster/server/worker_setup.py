"""Worker setups (``client.register_worker_setup``, ``client.upload_file``): the worker's side.

The scheduler sends every setup it keeps (SETUP) to each worker that joins, before any task,
and to every worker when a client registers one. Here each runs on a thread of its own, one at
a time in the order they came; meanwhile the state machine starts no task (``setup_started``).
The answer (RunResult) goes to the scheduler, which hands it to the client that registered the
setup, or logs a failure on a worker that joined later. A failed setup is logged here too; the
worker takes tasks all the same.

Files are written under the worker's local directory, which goes on ``sys.path``; a module
of the same name imported before is imported again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import io
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from ..protocol.serialize import dump_value, loads_function
from .executor import exception_payload

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("nbcluster.worker")


class Setups:
    """A worker's setups: the thread they run on, what ran, where files go."""

    def __init__(self) -> None:
        self.done: dict[str, str] = {}     # name -> digest of what ran here
        self.directory = ""                # made when first needed, removed at close
        self.thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.client: Any = None            # nbcluster.get_client() in this worker's tasks


def on_setup(worker: Worker, msg: m.Setup) -> None:
    """On the loop: run ``msg``'s setup before any further task starts."""
    setups = worker.setups
    digest = hashlib.sha256(msg.kind.encode() + msg.blob).hexdigest()
    if msg.request_id == 0 and setups.done.get(msg.name) == digest:
        worker._scheduler.send(m.RunResult(0, True, None))   # rejoining: done already
        return
    if setups.thread is None:
        setups.thread = concurrent.futures.ThreadPoolExecutor(1, "nbcluster-setup")
    worker.apply(worker._state.setup_started())
    comm = worker._scheduler                 # answered where it was asked
    future = worker._running_loop.run_in_executor(setups.thread, _run, worker, msg)

    def done(f: asyncio.Future) -> None:
        ok, value = f.result()
        if ok:
            setups.done[msg.name] = digest
        else:
            logger.error("worker setup %r failed on %s: %s", msg.name, worker.address,
                         value[1] if isinstance(value, tuple) else value)
            value = value[0]
        comm.send(m.RunResult(msg.request_id, ok, value))
        if not worker._closing and worker.state is not None:
            worker.apply(worker._state.setup_done())

    future.add_done_callback(done)


def _run(worker: Worker, msg: m.Setup) -> tuple[bool, Any]:
    try:
        if msg.kind == "function":
            result = loads_function(msg.blob)()
        else:
            result = install(directory(worker), msg.name, msg.kind, msg.blob)
        return True, dump_value(result, what=f"the result of setup {msg.name!r}")
    except BaseException as e:  # noqa: BLE001 - a setup's failure goes back, whatever it is
        return False, exception_payload(e)


def directory(worker: Worker) -> str:
    """The worker's local directory (uploaded files), made when first needed."""
    setups = worker.setups
    if not setups.directory:
        setups.directory = tempfile.mkdtemp(prefix="nbcluster-worker-")
    return setups.directory


def install(root: str, name: str, kind: str, blob: bytes) -> list[str]:
    """Write an uploaded file (or package) under ``root``, put it on ``sys.path`` and import
    it (again, if a module of that name was imported): the names of the modules imported."""
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"upload_file: bad file name {name!r}")
    path = os.path.join(root, name)
    if kind == "package":
        shutil.rmtree(path, ignore_errors=True)
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            z.extractall(root)
        entry, modules = root, [name]
    elif name.endswith(".py"):
        _write(path, blob)
        module = name[:-3]
        cache = os.path.join(root, "__pycache__")   # a rewrite within one second of the
        if os.path.isdir(cache):                    # last keeps its size and mtime: stale
            for f in os.listdir(cache):
                if f.startswith(module + "."):
                    os.remove(os.path.join(cache, f))
        entry, modules = root, [module]
    elif name.endswith((".zip", ".egg")):
        # each version under a name of its own: zipimport caches an archive's listing by path
        stem, ext = os.path.splitext(name)
        path = os.path.join(root, f"{stem}-{hashlib.sha256(blob).hexdigest()[:12]}{ext}")
        _write(path, blob)
        with zipfile.ZipFile(path) as z:
            modules = sorted({n.split("/")[0].removesuffix(".py") for n in z.namelist()
                              if n.endswith(".py") and not n.startswith(("EGG-INFO", "_"))})
        entry = path
    else:
        raise ValueError(f"upload_file takes a .py, .zip or .egg file or a package "
                         f"directory, not {name!r}")
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)                 # first: this version wins over an older one
    importlib.invalidate_caches()
    for module in modules:
        for loaded in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
            del sys.modules[loaded]
        importlib.import_module(module)
    return modules


def _write(path: str, blob: bytes) -> None:
    tmp = f"{path}.part"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


async def close(worker: Worker) -> None:
    """The worker closes: its tasks' client first (seceded tasks waiting on it end), then
    the setup thread and the local directory."""
    setups = worker.setups
    client, setups.client = setups.client, None
    loop = asyncio.get_running_loop()
    if client is not None:
        await loop.run_in_executor(None, client.close)
    if setups.thread is not None:
        setups.thread.shutdown(wait=False, cancel_futures=True)
    if setups.directory:
        shutil.rmtree(setups.directory, ignore_errors=True)
