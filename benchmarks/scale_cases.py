"""One measurement of the scale benchmark, in a process of its own (issue 14, parts 2-5).

``python -m benchmarks.scale_cases SYSTEM CASE TIME_LIMIT OUT.json`` starts a scheduler from
SYSTEM's command line and its workers (see ``scale_hosts``), connects a client from this
process, measures CASE and writes its figures to OUT.json (after every step, so what was
measured survives a later hang). Cases:

- ``p2:W:H:N``  W4-style ``gather(map(inc, range(N)))``, W in-process workers in H hosts
- ``p2proc:W:N`` the same with W worker processes (nbcluster's CLI worker)
- ``p3:N``      ``map(inc, range(N))`` + gather: tasks/s, peak memory per task
- ``p4tree:N``  sum of N leaves, by a tree of ``sum`` over 8 futures at a time
- ``p4a2a:N``   N tasks, then N tasks that each take all N of the first layer
- ``p5:C:T``    C clients at once, each ``map`` of T tasks then ``gather``
- ``idle:W:H[:S]`` scheduler CPU with W idle in-process workers in H hosts, over S s (10)

TIME_LIMIT bounds the timed part (the cluster's start has its own bound); a case that runs
out of time reports what it did within it. The body runs on a thread: if even that does not
come back (a ``map`` call that does not return), the figures so far are written and the
process leaves; ``Processes.stop`` ends the scheduler and hosts either way.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import TimeoutError as CFTimeoutError
from typing import Any, Callable

from . import tasks
from .scale_hosts import Processes, cpu_seconds, peak_rss, reset_peak, rss

FAN_IN = 8            # the tree reduction sums this many futures per task
IDLE_WINDOW = 10.0    # seconds of CPU time measured for the idle case
WARMUP = 1000


class Case:
    """What a case needs: the system's client API, its processes, the output record."""

    def __init__(self, system: str, case: str, time_limit: float, out: str, log) -> None:
        self.system, self.case, self.time_limit, self.out = system, case, time_limit, out
        self.procs = Processes(system, log)
        self.record: dict[str, Any] = {"system": system, "case": case, "metrics": {},
                                       "notes": [], "status": "running"}
        if system == "dask":
            import distributed as lib

            self.record["version"] = lib.__version__
        else:
            import nbcluster as lib

            self.record["version"] = lib.__version__
        self.Client, self.wait = lib.Client, lib.wait
        self._next = 10_000_000  # arguments never repeat (dask's pure=True key hashing)

    def unique(self, n: int) -> int:
        base = self._next
        self._next += n + 1
        return base

    def put(self, **metrics: Any) -> None:
        self.record["metrics"].update(metrics)
        self.save()

    def note(self, text: str) -> None:
        self.record["notes"].append(text)
        self.save()

    def save(self) -> None:
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.record, f, indent=1, default=str)
        os.replace(tmp, self.out)

    # ---------------------------------------------------------------- cluster
    def start(self, workers: int, hosts: int = 0, processes: bool = False,
              start_limit: float = 120.0, partial: bool = False):
        """Scheduler, workers and a connected client; records the start-up time. With
        ``partial``, fewer workers than asked by ``start_limit`` is noted, not an error."""
        t0 = time.perf_counter()
        address = self.procs.start_scheduler()
        if processes:
            self.procs.start_worker_processes(workers)
        else:
            self.procs.start_hosts(workers, hosts or workers)
        client = self.Client(address)
        try:
            client.wait_for_workers(workers, timeout=start_limit)
        except (TimeoutError, CFTimeoutError, OSError) as e:
            have = len(client.scheduler_info()["workers"])
            self.put(workers_connected=have)
            if partial:
                self.note(f"start: {e}; measured with the {have:,} connected by then")
                self.put(start_s=time.perf_counter() - t0)
                return client
            client.close()
            raise RuntimeError(f"only {have} of {workers} workers connected within "
                               f"{start_limit:.0f} s ({e})") from None
        self.put(workers_connected=workers, start_s=time.perf_counter() - t0,
                 scheduler_pid=self.procs.scheduler.pid)
        return client

    def warm_up(self, client) -> None:
        base = self.unique(WARMUP)
        client.gather(client.map(tasks.inc, range(base, base + WARMUP)))

    def wait_until(self, futures: list, t0: float) -> bool:
        """Wait for ``futures`` until the case's time limit (counted from ``t0``)."""
        left = self.time_limit - (time.perf_counter() - t0)
        try:
            self.wait(futures, timeout=max(0.01, left))
            return True
        except (TimeoutError, CFTimeoutError):
            return False

    def timed_out(self, futures: list, t0: float, total: int, what: str = "tasks") -> None:
        done = sum(1 for f in futures if f.done())
        elapsed = time.perf_counter() - t0
        self.put(done=done, elapsed_s=elapsed, rate=done / elapsed)
        self.record["status"] = "timeout"
        self.note(f"time limit {self.time_limit:.0f} s: {done:,} of {total:,} {what} done, "
                  f"counted {elapsed:.0f} s after the first submit")


class _CpuShares:
    """CPU % of the scheduler, the worker processes and this (the client's) process over a
    measurement: which of them is the limit (100 % is one core)."""

    def __init__(self, c: Case) -> None:
        self.c = c
        self.sched = c.procs.scheduler.pid
        self.others = [p for p in c.procs.pids() if p != self.sched]
        self.t0, self.before = time.perf_counter(), self._read()

    def _read(self) -> tuple[float, float, float]:
        workers = 0.0
        for pid in self.others:
            try:
                workers += cpu_seconds(pid)
            except OSError:   # gone: its share is lost, not the measurement
                pass
        return cpu_seconds(self.sched), workers, time.process_time()

    def put(self) -> None:
        wall = time.perf_counter() - self.t0
        pct = [100 * (b - a) / wall for a, b in zip(self.before, self._read())]
        self.c.put(scheduler_cpu_pct=pct[0], workers_cpu_pct=pct[1], client_cpu_pct=pct[2])


# --------------------------------------------------------------------------- cases
def _map_throughput(c: Case, client, n: int, memory: bool = False) -> None:
    """``gather(map(inc, range(n)))``; with ``memory``, the scheduler's and this process's
    peak RSS over the call, less the RSS before it, per task."""
    sched = c.procs.scheduler.pid
    if memory:
        sched_before, client_before = rss(sched), rss()
        c.record["peak_reset"] = reset_peak(sched) and reset_peak()
    base = c.unique(n)
    cpu = _CpuShares(c)
    t0 = time.perf_counter()
    futures = client.map(tasks.inc, range(base, base + n))
    c.put(map_call_s=time.perf_counter() - t0)
    finished = c.wait_until(futures, t0)
    if finished:
        results = client.gather(futures)
        elapsed = time.perf_counter() - t0
        if len(results) != n or results[0] != base + 1 or results[-1] != base + n:
            raise AssertionError(f"map of {n}: wrong results")
        c.put(done=n, elapsed_s=elapsed, rate=n / elapsed)
    else:
        c.timed_out(futures, t0, n)
    cpu.put()
    if memory:
        c.put(scheduler_bytes_per_task=(peak_rss(sched) - sched_before) / n,
              client_bytes_per_task=(peak_rss() - client_before) / n,
              scheduler_peak_mb=peak_rss(sched) / 1e6, client_peak_mb=peak_rss() / 1e6)


def case_p2(c: Case, workers: int, hosts: int, processes: bool, n: int) -> None:
    client = c.start(workers, hosts, processes, start_limit=max(60.0, workers * 0.5))
    try:
        c.warm_up(client)
        _map_throughput(c, client, n)
    finally:
        client.close()


def case_p3(c: Case, n: int) -> None:
    client = c.start(2)
    try:
        c.warm_up(client)
        _map_throughput(c, client, n, memory=True)
    finally:
        client.close()


def case_p4_tree(c: Case, leaves: int) -> None:
    client = c.start(2)
    try:
        c.warm_up(client)
        base = c.unique(leaves)
        t0 = time.perf_counter()
        level = client.map(tasks.inc, range(base, base + leaves))
        every = list(level)
        while len(level) > 1:   # each level sums FAN_IN futures of the one below
            level = client.map(sum, [level[i:i + FAN_IN] for i in range(0, len(level), FAN_IN)])
            every += level
        c.put(submit_s=time.perf_counter() - t0, tasks=len(every))
        if c.wait_until(level, t0):
            got = level[0].result()
            elapsed = time.perf_counter() - t0
            want = sum(range(base + 1, base + leaves + 1))
            if got != want:
                raise AssertionError(f"tree: {got} != {want}")
            c.put(elapsed_s=elapsed, done=len(every), rate=len(every) / elapsed)
        else:
            c.timed_out(every, t0, len(every))
    finally:
        client.close()


def case_p4_all_to_all(c: Case, width: int) -> None:
    client = c.start(2)
    try:
        c.warm_up(client)
        base = c.unique(width)
        t0 = time.perf_counter()
        first = client.map(tasks.inc, range(base, base + width))
        # sum(first, j): each of the second layer takes every future of the first (a list
        # argument), and j keeps the keys apart
        second = [client.submit(sum, first, j) for j in range(width)]
        c.put(submit_s=time.perf_counter() - t0, tasks=2 * width, edges=width * width)
        if c.wait_until(second, t0):
            got = client.gather(second)
            elapsed = time.perf_counter() - t0
            total = sum(range(base + 1, base + width + 1))
            if got != [total + j for j in range(width)]:
                raise AssertionError("all-to-all: wrong results")
            c.put(elapsed_s=elapsed, done=2 * width, rate=2 * width / elapsed)
        else:
            c.timed_out(first + second, t0, 2 * width)
    finally:
        client.close()


def case_p5(c: Case, n_clients: int, per_client: int) -> None:
    main = c.start(2)
    clients: list = []
    try:
        c.warm_up(main)
        t0 = time.perf_counter()
        for _ in range(n_clients):
            clients.append(c.Client(c.procs.address))
        c.put(connect_s=time.perf_counter() - t0)
        bases = [c.unique(per_client) for _ in range(n_clients)]
        gate = threading.Barrier(n_clients + 1)
        ends: list[float] = []
        errors: list[str] = []

        def one(client, base: int) -> None:
            gate.wait()
            try:
                got = client.gather(client.map(tasks.inc, range(base, base + per_client)))
                if got != list(range(base + 1, base + per_client + 1)):
                    raise AssertionError("wrong results")
                ends.append(time.perf_counter())
            except Exception as e:   # reported, the others go on
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(cl, b), daemon=True)
                   for cl, b in zip(clients, bases)]
        for t in threads:
            t.start()
        gate.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(max(0.01, c.time_limit - (time.perf_counter() - t0)))
        total = n_clients * per_client
        if errors:
            c.note(f"{len(errors)} clients failed, first: {errors[0]}")
        if len(ends) == n_clients:
            elapsed = max(ends) - t0
            c.put(elapsed_s=elapsed, done=total, rate=total / elapsed)
        else:
            done, elapsed = len(ends) * per_client, time.perf_counter() - t0
            c.put(elapsed_s=elapsed, done=done, rate=done / elapsed)
            c.record["status"] = "timeout"
            c.note(f"timeout after {c.time_limit:.0f} s: {len(ends)} of {n_clients} clients "
                   f"had gathered ({done:,} of {total:,} tasks)")
        t1 = time.perf_counter()
        for cl in clients:
            cl.close()
        clients.clear()
        c.put(close_s=time.perf_counter() - t1)
    finally:
        for cl in clients:
            cl.close()
        main.close()


def case_idle(c: Case, workers: int, hosts: int, window: float = IDLE_WINDOW) -> None:
    client = c.start(workers, hosts, start_limit=max(60.0, 2 * c.time_limit), partial=True)
    try:
        time.sleep(2.0)   # the last joins settle
        sched = c.procs.scheduler.pid
        host_pids = [p for p in c.procs.pids() if p != sched]
        t0 = time.perf_counter()
        s0, h0 = cpu_seconds(sched), sum(cpu_seconds(p) for p in host_pids)
        time.sleep(window)
        s1, h1 = cpu_seconds(sched), sum(cpu_seconds(p) for p in host_pids)
        window = time.perf_counter() - t0
        c.put(window_s=window, scheduler_cpu_pct=100 * (s1 - s0) / window,
              hosts_cpu_pct=100 * (h1 - h0) / window, scheduler_rss_mb=rss(sched) / 1e6,
              hosts_rss_mb=sum(rss(p) for p in host_pids) / 1e6)
    finally:
        client.close()


def run_case(c: Case) -> None:
    kind, *nums = c.case.split(":")
    a = [int(x) for x in nums]
    bodies: dict[str, Callable[[], None]] = {
        "p2": lambda: case_p2(c, a[0], a[1], False, a[2]),
        "p2proc": lambda: case_p2(c, a[0], 0, True, a[1]),
        "p3": lambda: case_p3(c, a[0]),
        "p4tree": lambda: case_p4_tree(c, a[0]),
        "p4a2a": lambda: case_p4_all_to_all(c, a[0]),
        "p5": lambda: case_p5(c, a[0], a[1]),
        "idle": lambda: case_idle(c, *a),
    }
    bodies[kind]()


def main(argv: list[str]) -> int:
    system, case, time_limit, out = argv[0], argv[1], float(argv[2]), argv[3]
    hard_limit = float(argv[4]) if len(argv) > 4 else 3 * time_limit + 120
    c = Case(system, case, time_limit, out, sys.stderr)
    c.save()

    def body() -> None:
        try:
            run_case(c)
            if c.record["status"] == "running":
                c.record["status"] = "ok"
        except BaseException as e:   # the cell shows it; the processes are stopped below
            c.record["status"] = "error"
            c.record["error"] = f"{type(e).__name__}: {e}"
        c.save()

    t = threading.Thread(target=body, name="scale-case", daemon=True)
    t.start()
    try:
        t.join(hard_limit)
        if t.is_alive():
            c.record["status"] = "timeout"
            c.note(f"did not finish within {hard_limit:.0f} s (a call did not return); "
                   "the figures are those measured by then")
    finally:
        c.procs.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # a client thread stuck in a call must not hold the exit


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
