"""Worker setup that survives replacement: ``register_worker_setup`` and ``upload_file``. A base
of Client.

The scheduler keeps each setup (pickled once, here) and runs it on every worker connected now
and on every worker that joins later (a replacement, an adaptive or scaled-up one, one that
reconnects), before that worker starts a task. Registering a setup waits for the current
workers to run it: a failure raises here, with the worker named. A failure on a worker that
joins later is logged by the scheduler and that worker.

Also the versions check at connect (``warn_versions``).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from typing import Any, Callable

from ..protocol.serialize import Serialized, dumps_function, loads
from ..versions import describe, mismatches, versions

MAX_UPLOAD = 256 * 1024 * 1024     # bytes: a setup travels in one message to every worker


class WorkerSetup:
    _conn: Any

    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

    def register_worker_setup(self, fn: Callable[[], Any], name: str | None = None) -> dict:
        """Run ``fn()`` on every worker now and on every worker that joins later, before it
        takes a task; ``{worker: result}`` of the workers connected now. A later setup of the
        same ``name`` (default: the function's name) replaces it."""
        if not callable(fn):
            raise TypeError(f"register_worker_setup takes a function, got {fn!r}")
        if name is None:
            name = getattr(fn, "__qualname__", None) or type(fn).__name__
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        return self._sync(self._setup(name, "function", dumps_function(fn)))

    def upload_file(self, path: str | os.PathLike) -> dict:
        """Make a ``.py`` file, a ``.zip``/``.egg`` archive or a package directory importable
        on every worker, now and on every worker that joins later (a module of the same name
        already imported there is imported again); ``{worker: [modules imported]}``."""
        path = os.fspath(path)
        name = os.path.basename(os.path.normpath(path))
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "__init__.py")):
                raise ValueError(f"upload_file: the directory {path!r} is not a package "
                                 "(it has no __init__.py)")
            kind, blob = "package", _zip_directory(path, name)
        elif os.path.isfile(path):
            if not name.endswith((".py", ".zip", ".egg")):
                raise ValueError(f"upload_file takes a .py, .zip or .egg file or a package "
                                 f"directory, not {path!r}")
            kind = "file"
            with open(path, "rb") as f:
                blob = f.read()
        else:
            raise FileNotFoundError(f"upload_file: no file or directory {path!r}")
        if len(blob) > MAX_UPLOAD:
            raise ValueError(f"upload_file: {path!r} is {len(blob)} bytes; at most "
                             f"{MAX_UPLOAD} (put large data where workers read it instead)")
        return self._sync(self._setup(name, kind, blob))

    async def _setup(self, name: str, kind: str, blob: bytes) -> dict:
        reply = await self._conn.request("register_worker_setup", setup=name, kind=kind,
                                         blob=blob)
        if reply["errors"]:
            worker, exc = next(iter(reply["errors"].items()))
            err = loads(exc) if type(exc) is Serialized else RuntimeError(str(exc))
            if not isinstance(err, BaseException):
                err = RuntimeError(str(err))
            err.add_note(f"(worker setup {name!r} failed on worker {worker}; "
                         f"{len(reply['errors'])} of {len(reply['errors']) + len(reply['results'])}"
                         " workers failed; workers that join later run it too)")
            raise err
        return {w: (loads(v) if type(v) is Serialized else v)
                for w, v in reply["results"].items()}


def _zip_directory(path: str, name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(root, f)
                z.write(full, os.path.join(name, os.path.relpath(full, path)))
    return buffer.getvalue()


def warn_versions(conn: Any, address: str) -> None:
    """After connecting (once): a UserWarning for each version that differs between this
    client and the scheduler or its workers (from the scheduler's answer to HELLO)."""
    info, conn.versions = conn.versions, None
    if not isinstance(info, dict):
        return
    mine = versions()
    found = mismatches(mine, info.get("scheduler"))
    if found:
        warnings.warn(f"version mismatch with the scheduler at {address}: "
                      f"{describe(found, 'here', 'on the scheduler')}", UserWarning,
                      stacklevel=4)
    for entry in info.get("workers") or ():
        if not isinstance(entry, list) or len(entry) != 3:
            continue
        theirs, count, example = entry
        found = mismatches(mine, theirs)
        if found:
            where = f"on {count} worker{'s' if count != 1 else ''} (such as {example})"
            warnings.warn(f"version mismatch with workers of {address}: "
                          f"{describe(found, 'here', where)}", UserWarning, stacklevel=4)
