"""How the scheduler's cost per task grows with the number of workers (issue 14, part 1).

``python -m benchmarks.scale`` feeds the pure state machine (no sockets, no threads):
batches of 1,000 tasks, every COMPUTE answered by a FINISHED from its worker (one batch per
worker per round, as a real scheduler receives them), finished keys released. It prints
tasks per second and microseconds per task at 2, 16, 128 and 1,000 workers of 4 threads, for
independent tasks and for chains (each task depends on the one before).
"""

from __future__ import annotations

import argparse
import time

from nbcluster.protocol import messages as m
from nbcluster.state.scheduler_state import SchedulerState


def run(workers: int, tasks: int, chain: bool, threads: int = 4) -> float:
    """Seconds the state machine spends deciding ``tasks`` tasks with ``workers`` workers."""
    state = SchedulerState()
    state.add_client("c")
    for i in range(workers):
        state.add_worker(f"w{i}", threads, f"w{i}", {"address": f"w{i}"})
    state.handle("c", [m.Function("f", b"f")], 0.0)
    now, spent = 1.0, 0.0
    for batch in range((tasks + 999) // 1000):
        keys = [f"k{batch}-{i}" for i in range(1000)]
        specs = [m.TaskSpec(key, "f", [1], None, [keys[i - 1]] if chain and i else [], None)
                 for i, key in enumerate(keys)]
        start = time.perf_counter()
        out = state.handle("c", [m.Submit(specs)], now)
        spent += time.perf_counter() - start
        while out:
            by_worker: dict[str, list[m.Message]] = {}
            for peer, msg in out:
                if type(msg) is m.Compute:
                    by_worker.setdefault(peer, []).append(
                        m.Finished(msg.key, 8, now, now + 0.001, True, 1, "int", msg.run))
            out = []
            for peer, finished in by_worker.items():
                now += 0.0001
                start = time.perf_counter()
                out += state.handle(peer, finished, now)
                spent += time.perf_counter() - start
        start = time.perf_counter()
        state.handle("c", [m.Release(keys)], now)
        spent += time.perf_counter() - start
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--workers", default="2,16,128,1000",
                        help="worker counts, comma separated (default: 2,16,128,1000)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    print(f"Pure SchedulerState, {args.tasks:,} tasks a measurement, best of {args.repeat}; "
          "4 threads a worker")
    print()
    print("| workers | independent tasks/s | µs/task | chain tasks/s | µs/task |")
    print("|--------:|--------------------:|--------:|--------------:|--------:|")
    for workers in counts:
        row = [f"{workers:,}"]
        for chain in (False, True):
            best = min(run(workers, args.tasks, chain) for _ in range(args.repeat))
            row += [f"{args.tasks / best:,.0f}", f"{best / args.tasks * 1e6:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
