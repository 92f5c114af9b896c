"""Receive memory for large frames, reused while it is warm.

A 200 MB frame read into fresh memory spends more time in page faults than in copying: the
kernel maps and zeroes 51,200 pages of 4 KiB one by one, and on a virtual machine the host may
have to back each page too. So the memory of a frame whose value is gone is kept for a few
seconds and reused for the next large frame, already mapped: repeated transfers do not fault
at all (1.3 GB/s with fresh memory, 3.0-3.5 GB/s with reused memory on the dev machine).

A region is free again when nothing but the pool refers to it: every user (the frame being
read, a ``Serialized``, a numpy array unpickled from it) holds a reference to the mapping, so
CPython's reference count says exactly when it is unused. Free regions are unmapped after
``IDLE_SECONDS`` or when they exceed ``MAX_FREE_BYTES``. Outside CPython every frame gets a
plain ``bytearray``.

Transparent huge pages (``MADV_HUGEPAGE``, as numpy asks for its large arrays) were measured
and left out: faulting 2 MiB pages is faster on warm memory, but memory the host has never
backed made a first 200 MB transfer 2-3 times slower (0.4 GB/s against 1.2 GB/s).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import sys
import threading
import time

POOLED_FROM = 4 * 1024 * 1024        # smaller frames take a bytearray: pooling costs more than it saves
GRAIN = 2 * 1024 * 1024              # regions are whole multiples of this, so near sizes share them
IDLE_SECONDS = 10.0                  # a free region unused for this long is unmapped


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 1024**3


MAX_FREE_BYTES = min(1024**3, _physical_memory() // 16)   # free memory kept per process

_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_COUNTS_REFERENCES = sys.implementation.name == "cpython" and hasattr(sys, "getrefcount")


class _Region:
    __slots__ = ("memory", "last_used")

    def __init__(self, memory: mmap.mmap, now: float) -> None:
        self.memory = memory
        self.last_used = now

    def unused(self) -> bool:
        # references: this attribute and getrefcount's own argument
        return sys.getrefcount(self.memory) <= 2


class ReceivePool:
    """Large receive buffers for one process; safe to use from several event loops."""

    def __init__(self, max_free_bytes: int = MAX_FREE_BYTES, idle_seconds: float = IDLE_SECONDS,
                 clock=time.monotonic) -> None:
        self.max_free_bytes = max_free_bytes
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._regions: list[_Region] = []
        self._lock = threading.Lock()
        self._trim_loop: asyncio.AbstractEventLoop | None = None
        self.enabled = _COUNTS_REFERENCES and _PRIVATE != 0

    def take(self, size: int):
        """A writable buffer of exactly ``size`` bytes that the socket may read into."""
        if size < POOLED_FROM or not self.enabled:
            return bytearray(size)
        now = self._clock()
        with self._lock:
            region = self._reusable(size)
            if region is None:
                memory = _map(size)
                if memory is None:
                    return bytearray(size)
                region = _Region(memory, now)
                self._regions.append(region)
            region.last_used = now
            view = memoryview(region.memory)[:size]     # in use from here: _release keeps it
            self._release(now)
        self._schedule_trim()
        return view

    def _reusable(self, size: int) -> _Region | None:
        best = None
        for r in self._regions:
            n = len(r.memory)
            if size <= n <= 2 * size and r.unused() and (best is None or n < len(best.memory)):
                best = r
        return best

    def _release(self, now: float) -> None:
        """Unmap free regions idle too long, then the oldest while over the free-bytes cap."""
        free = sorted((r for r in self._regions if r.unused()), key=lambda r: r.last_used)
        total = sum(len(r.memory) for r in free)
        for r in free:
            if total <= self.max_free_bytes and now - r.last_used < self.idle_seconds:
                break
            total -= len(r.memory)
            self._regions.remove(r)
            r.memory.close()

    def trim(self) -> None:
        """Unmap what has been free for too long (called by a timer while regions exist)."""
        with self._lock:
            self._release(self._clock())

    def release_free(self) -> int:
        """Unmap every free region now (its process is short of memory); the bytes unmapped."""
        released = 0
        with self._lock:
            for r in [r for r in self._regions if r.unused()]:
                released += len(r.memory)
                self._regions.remove(r)
                r.memory.close()
        return released

    def stats(self) -> dict:
        with self._lock:
            free = [len(r.memory) for r in self._regions if r.unused()]
            return {"regions": len(self._regions), "bytes": sum(len(r.memory) for r in self._regions),
                    "free_bytes": sum(free)}

    # -- a timer on the loop that received the frame, alive while the pool holds regions
    def _schedule_trim(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._trim_loop is not None and not self._trim_loop.is_closed():
            return
        self._trim_loop = loop
        loop.call_later(self.idle_seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._trim_loop = None
        self.trim()
        if self._regions:
            self._schedule_trim()


def _map(size: int) -> mmap.mmap | None:
    length = -(-size // GRAIN) * GRAIN
    try:
        return mmap.mmap(-1, length, flags=_PRIVATE)   # pages are mapped as the socket fills them
    except (OSError, ValueError):
        return None


POOL = ReceivePool()


def receive_buffer(size: int):
    """A writable buffer of ``size`` bytes (see :class:`ReceivePool`)."""
    return POOL.take(size)
