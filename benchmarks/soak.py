"""A soak run (issue 13): a local cluster under a steady mixed load for as long as you like,
with workers SIGKILLed now and then, every result checked, and the memory of every process
reported over time (a leak shows as a column that keeps growing).

    python -m benchmarks.soak --minutes 60 [--workers 3] [--kill-every 20] [--csv soak.csv]

Each round submits chains of dependent tasks, a reduction over them, a map of small tasks
and a few tasks with 1 MB results, gathers and checks everything, then releases it. Every
``--report-every`` seconds a row shows tasks done, tasks/s, the RSS of the scheduler, each
worker and this client, the tasks the scheduler holds (it should come back to about zero
between rounds) and the kills so far. Exits non-zero on a wrong result.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import sys
import threading
import time

import psutil

from nbcluster import Client, LocalCluster


def step(x, i):
    return x * 3 + i


def total(xs):
    return sum(xs)


def blob(i):
    return bytes([i % 256]) * 1_000_000


def _rss(pid: int | None) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 1e6 if pid else 0.0
    except psutil.Error:
        return 0.0


def _round(client: Client, rng: random.Random) -> int:
    chains, length = rng.randint(20, 60), rng.randint(5, 15)
    ends, expected = [], []
    for c in range(chains):
        x, value = client.submit(step, c, 0), c * 3
        for i in range(1, length):
            x, value = client.submit(step, x, i), value * 3 + i
        ends.append(x)
        expected.append(value)
    grand = client.submit(total, ends)
    small = client.map(step, range(2000), range(2000))
    big = client.map(blob, range(5))
    if client.gather(ends) != expected or grand.result() != sum(expected):
        raise AssertionError("a chain came back wrong")
    if client.gather(small) != [x * 3 + x for x in range(2000)]:
        raise AssertionError("a small task came back wrong")
    if [len(b) for b in client.gather(big)] != [1_000_000] * 5:
        raise AssertionError("a 1 MB result came back wrong")
    return chains * length + 1 + 2000 + 5


def _report(cluster, client: Client, sched_pid: int | None, elapsed: float, done: int,
            rate: float, kills: int) -> dict:
    workers = sorted(_rss(p) for p in cluster.worker_pids().values())
    row = {"min": elapsed / 60, "tasks": done, "tasks/s": rate, "sched MB": _rss(sched_pid),
           "workers MB": "/".join(f"{w:.0f}" for w in workers), "client MB": _rss(os.getpid()),
           "held tasks": sum(client.scheduler_info()["tasks"].values()), "kills": kills}
    print(" | ".join(f"{v:>10.1f}" if isinstance(v, float) else f"{v!s:>10}"
                     for v in row.values()), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kill-every", type=float, default=20.0,
                    help="seconds between SIGKILLs of a random worker (0: none)")
    ap.add_argument("--report-every", type=float, default=30.0)
    ap.add_argument("--csv", default=None, help="also write the rows to this file")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    end = time.monotonic() + a.minutes * 60
    rows: list[dict] = []
    with LocalCluster(n_workers=a.workers, threads_per_worker=a.threads,
                      dashboard=False) as cluster, Client(cluster) as client:
        sched_pid = cluster._scheduler_proc.pid if cluster._scheduler_proc else None
        started = last_report = time.monotonic()
        done = done_at_report = rounds = 0
        stop, kills = threading.Event(), [0]

        def killer() -> None:   # under load: in the middle of rounds, not between them
            while a.kill_every and not stop.wait(a.kill_every * rng.uniform(0.5, 1.5)):
                pids = cluster.worker_pids()
                if len(pids) == a.workers:      # else a replacement is still starting
                    os.kill(rng.choice(sorted(pids.values())), signal.SIGKILL)
                    kills[0] += 1

        thread = threading.Thread(target=killer, name="soak-killer", daemon=True)
        thread.start()
        print(f"soak: {a.workers} workers x {a.threads} threads, {a.minutes:g} min, " +
              (f"a worker SIGKILLed every {a.kill_every:g} s or so" if a.kill_every
               else "no kills"), flush=True)
        print(" | ".join(f"{h:>10}" for h in ("min", "tasks", "tasks/s", "sched MB",
                                               "workers MB", "client MB", "held tasks",
                                               "kills")), flush=True)
        try:
            while time.monotonic() < end:
                done += _round(client, rng)
                rounds += 1
                now = time.monotonic()
                if now - last_report >= a.report_every or now >= end:
                    rows.append(_report(cluster, client, sched_pid, now - started, done,
                                        (done - done_at_report) / (now - last_report),
                                        kills[0]))
                    last_report, done_at_report = now, done
        finally:
            stop.set()
            thread.join(10)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    first, last = rows[0], rows[-1]
    print(f"{rounds} rounds, {done:,} tasks, every result right; scheduler "
          f"{first['sched MB']:.0f} -> {last['sched MB']:.0f} MB, client "
          f"{first['client MB']:.0f} -> {last['client MB']:.0f} MB, {kills[0]} workers killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
