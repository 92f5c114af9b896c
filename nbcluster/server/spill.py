"""Results spilled to disk when a worker holds more than its memory target.

The worker's state machine decides what to spill (least recently used results first, see
``WorkerState``); this module does the I/O. A value is written in the form it travels in
(pickle header plus out-of-band buffers), so a peer or client asking for it gets the file's
bytes without unpickling, and a task that needs it loads it back into writable memory. In the
worker's data store the value is replaced by a :class:`Spilled` marker.

Writing happens on one background thread, so the event loop never waits for the disk; the
value stays in memory (and usable) until its file is complete.

A value that is not written stays in memory for good: a plain value (a number, a short string:
it travels inline, there is nothing worth a file) quietly, an error (unpicklable, disk full)
with one warning per reason per worker, not one per key.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
from typing import Any, Callable

from ..errors import PicklingError
from ..protocol.serialize import Serialized, dump_value, loads

_COUNT = struct.Struct("<I")

logger = logging.getLogger("nbcluster.worker.spill")


class Spilled:
    """Where a spilled value is; it takes ``nbytes`` in memory once loaded."""

    __slots__ = ("path", "nbytes")

    def __init__(self, path: str, nbytes: int) -> None:
        self.path = path
        self.nbytes = nbytes

    def serialized(self) -> Serialized:
        """The value as it travels, read back into writable memory (arrays stay writable)."""
        with open(self.path, "rb") as f:
            (count,) = _COUNT.unpack(f.read(_COUNT.size))
            lengths = struct.unpack(f"<{count}Q", f.read(8 * count))
            parts = []
            for n in lengths:
                part = bytearray(n)
                if f.readinto(part) != n:
                    raise OSError(f"spill file {self.path} is truncated")
                parts.append(part)
        return Serialized(bytes(parts[0]), parts[1:])

    def load(self) -> Any:
        return loads(self.serialized())

    def __repr__(self) -> str:
        return f"<Spilled {self.nbytes} bytes at {self.path}>"


class SpillStore:
    """Files of spilled values in one directory, written by one background thread."""

    def __init__(self, directory: str | None = None) -> None:
        self._given = directory
        self.directory: str | None = None
        self._lock = threading.Lock()
        self._jobs: list = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._names = 0
        self._told: set[str] = set()     # reasons for keeping a value in memory, said once

    def _dir(self) -> str:
        if self.directory is None:
            if self._given:
                os.makedirs(self._given, mode=0o700, exist_ok=True)
                self.directory = self._given
            else:
                self.directory = tempfile.mkdtemp(prefix="nbcluster-spill-")
        return self.directory

    def write_later(self, key: str, value: Any, nbytes: int,
                    done: Callable[[str, Any, "Spilled | None", Exception | None], None]) -> None:
        """Write ``value`` on the spill thread, then call ``done(key, value, marker, error)``
        there (the caller moves it to its own loop). No marker: it was not written (a plain
        value if there is no error either) and stays in memory."""
        with self._lock:
            if self._closed:
                return
            self._jobs.append((key, value, nbytes, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbcluster-spill",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                key, value, nbytes, done = self._jobs.pop(0)
            try:
                marker, error = self.write(key, value, nbytes), None
            except Exception as e:   # unpicklable, or the disk is full: the value stays
                marker, error = None, e
            except BaseException as e:   # noqa: BLE001 - SystemExit from a __reduce__: this
                marker = None            # thread must live on to write the next values
                error = PicklingError(f"pickling the result of {key!r} raised "
                                      f"{type(e).__name__}: {e}")
            done(key, value, marker, error)
            key = value = done = marker = error = None   # hold nothing while waiting

    def write(self, key: str, value: Any, nbytes: int) -> Spilled | None:
        """The value's file; None for a plain value (it travels inline: not worth a file)."""
        ser = dump_value(value, what=f"the result of {key!r} (spilling it to disk)")
        if type(ser) is not Serialized:
            return None
        parts = [ser.header, *ser.buffers]
        with self._lock:
            self._names += 1
            path = os.path.join(self._dir(), f"{self._names}.spill")
        with open(path, "wb") as f:
            f.write(_COUNT.pack(len(parts)))
            f.write(struct.pack(f"<{len(parts)}Q", *(memoryview(p).nbytes for p in parts)))
            for p in parts:
                f.write(p)
        return Spilled(path, nbytes)

    def kept_in_memory(self, key: str, error: Exception | None) -> None:
        """Say that ``key`` stays in memory (it was not written): once per reason on this
        worker, at DEBUG after that. A plain value is not a problem: INFO; an error: WARNING."""
        reason = "plain" if error is None else type(error).__name__
        if reason in self._told:
            logger.debug("%s stays in memory (not spilled: %s)", key, error or "a plain value")
            return
        self._told.add(reason)
        if error is None:
            logger.info("results that are plain values (numbers, short strings, such as %s) "
                        "stay in memory: too small to be worth writing to disk", key)
        else:
            logger.warning("cannot spill %s to disk, it stays in memory: %s (other results "
                           "failing with %s are logged at DEBUG)", key, error, reason)

    @staticmethod
    def remove(marker: Spilled) -> None:
        try:
            os.remove(marker.path)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._wake.notify()
        if self.directory is not None and not self._given:
            shutil.rmtree(self.directory, ignore_errors=True)
        elif self.directory is not None:
            for name in os.listdir(self.directory):
                if name.endswith(".spill"):
                    try:
                        os.remove(os.path.join(self.directory, name))
                    except OSError:
                        pass
