"""Which workers have room, kept up to date as tasks move, so that placing a task or finding a
thief and a victim costs O(log W) in the number of workers W instead of a scan of all of them.

The heaps are lazy: every change of a worker's load pushes a fresh entry stamped with the
worker's new ``version``; entries with an older stamp are skipped when they reach the top, and
a heap that grows past a few entries per worker is rebuilt from its live entries (amortised
O(1) per change). Loads are tasks assigned per thread (``len(processing) / nthreads``).
"""

from __future__ import annotations

import heapq
from typing import Iterator

from .data_moves import Move
from .model import WorkerState
from .resources import ResourceBook

_SLACK = 64    # a heap may hold this many more entries than 2 per worker before it is rebuilt


_QueueEntry = tuple[float, int, int, int, WorkerState]   # load, assigned, index, version


class Occupancy:
    def __init__(self) -> None:
        # queue name -> min-heap of (load, assigned, index, version, worker): not paused
        self.by_queue: dict[str, list[_QueueEntry]] = {}
        # max-heap of (-load, index, version, worker): workers with tasks waiting behind
        # their threads (paused ones too: their queued tasks may be taken)
        self.busy: list[tuple[float, int, int, WorkerState]] = []
        self.idle: dict[WorkerState, None] = {}     # not paused, a thread free
        self.paused: dict[WorkerState, None] = {}
        self.retiring: dict[WorkerState, None] = {}   # leaving gracefully: in no heap
        self.resources = ResourceBook()   # tasks that need resources, workers that have them
        self.moves: list[Move] = []       # client.replicate/rebalance under way (data_moves.py)
        self.live = 0
        self._registered = 0

    def add(self, ws: WorkerState) -> None:
        ws.index = self._registered
        self._registered += 1
        self.live += 1
        if ws.resources is not None:
            self.resources.workers[ws] = None
        self.changed(ws)

    def remove(self, ws: WorkerState) -> None:
        ws.version = -1            # every entry of it is stale from now on
        self.live -= 1
        self.idle.pop(ws, None)
        self.paused.pop(ws, None)
        self.retiring.pop(ws, None)
        self.resources.workers.pop(ws, None)

    def changed(self, ws: WorkerState) -> None:
        """``ws``'s load, or its paused flag, changed."""
        if ws.version < 0:         # removed (its tasks are being handed back)
            return
        ws.version += 1
        n, threads = len(ws.processing), ws.nthreads
        if ws.retiring is not None:   # its entries went stale with the version: none new
            self.retiring[ws] = None
            self.idle.pop(ws, None)
            self.paused.pop(ws, None)
            return
        if ws.paused:
            self.idle.pop(ws, None)
            self.paused[ws] = None
        else:
            if self.paused:
                self.paused.pop(ws, None)
            entry = (n / threads, ws.assigned, ws.index, ws.version, ws)
            for name in ws.queues:
                heap = self.by_queue.get(name)
                if heap is None:
                    heap = self.by_queue[name] = []
                heapq.heappush(heap, entry)
                if len(heap) > 2 * self.live + _SLACK:
                    _rebuild(heap)
            if n < threads:
                self.idle[ws] = None
            else:
                self.idle.pop(ws, None)
        if n > threads:
            heapq.heappush(self.busy, (-n / threads, ws.index, ws.version, ws))
            if len(self.busy) > 2 * self.live + _SLACK:
                self.busy[:] = [e for e in self.busy if e[2] == e[3].version]
                heapq.heapify(self.busy)

    def least_loaded(self, queue: str) -> WorkerState | None:
        """The not-paused worker of ``queue`` with the fewest tasks per thread (ties: fewer
        ever assigned, then the earliest to join)."""
        heap = self.by_queue.get(queue)
        while heap:
            entry = heap[0]
            ws: WorkerState = entry[4]
            if entry[3] == ws.version:
                return ws
            heapq.heappop(heap)
        return None

    def busiest(self, limit: int) -> list[WorkerState]:
        """Up to ``limit`` workers with tasks waiting behind their threads, busiest first."""
        heap = self.busy
        found: list[tuple[float, int, int, WorkerState]] = []
        while heap and len(found) < limit:
            entry = heapq.heappop(heap)
            ws = entry[3]
            if entry[2] == ws.version and len(ws.processing) > ws.nthreads:
                found.append(entry)
        for entry in found:        # still theirs: back for the next look
            heapq.heappush(heap, entry)
        return [entry[3] for entry in found]

    def thieves(self, limit: int) -> list[WorkerState]:
        """Up to ``limit`` idle workers, the earliest to join first."""
        if len(self.idle) <= limit:
            return sorted(self.idle, key=_index)
        return heapq.nsmallest(limit, self.idle, key=_index)

    def paused_in(self, queue: str) -> Iterator[WorkerState]:
        return (ws for ws in self.paused if queue in ws.queues)


def _index(ws: WorkerState) -> int:
    return ws.index


def _rebuild(heap: list[_QueueEntry]) -> None:
    heap[:] = [e for e in heap if e[3] == e[4].version]
    heapq.heapify(heap)
