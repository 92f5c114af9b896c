"""One benchmark child: one system, one workload, in a fresh interpreter.

    python -m benchmarks.child --system dask --workload W4 --mode quick --out result.json

The parent (``benchmarks.runner``) starts this in its own process group with
a timeout.  Results are rewritten to ``--out`` as JSON after every metric, so
the parent keeps what was measured even if a later step hangs or crashes.
Only the named system is imported here; the other is never loaded.
"""

import argparse
import contextlib
import json
import os
import random
import sys
import time
import traceback

from .systems import SYSTEMS, make_system
from .workloads import METRICS, REPEATS, WORKLOADS, metrics_of


def describe(exc):
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    return text[:300]


class Recorder:
    def __init__(self, path, system, workload):
        self.path = path
        self.data = {"system": system, "workload": workload, "pid": os.getpid(),
                     "metrics": {}, "errors": {}, "info": {}, "versions": {}}
        self.flush()

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def value(self, metric_id, value, samples=None):
        entry = {"value": float(value)}
        if samples is not None:
            entry["samples"] = [float(x) for x in samples]
        self.data["metrics"][metric_id] = entry
        self.flush()
        print(f"  {metric_id} = {value:.6g}", file=sys.stderr, flush=True)

    def skip(self, metric_id, reason):
        self.data["metrics"][metric_id] = {"skipped": reason}
        self.flush()

    def error(self, key, exc):
        traceback.print_exception(exc, file=sys.stderr)
        self.data["errors"][key] = describe(exc)
        self.flush()

    def info(self, **kw):
        self.data["info"].update(kw)
        self.flush()

    @contextlib.contextmanager
    def measuring(self, *metric_ids):
        """Errors inside are recorded against these metrics, then swallowed."""
        try:
            yield
        except Exception as exc:
            for mid in metric_ids:
                if mid not in self.data["metrics"]:
                    self.data["errors"][mid] = describe(exc)
            traceback.print_exception(exc, file=sys.stderr)
            self.flush()


class Context:
    def __init__(self, system, client, mode, rec, log):
        self.system = system
        self.client = client
        self.mode = mode
        self.reps = REPEATS[mode]
        self.rec = rec
        self.log = log
        # Task arguments start at a random offset and never repeat.
        self._next = random.randrange(1, 2**40) * 1000

    def unique(self, width=1):
        """An integer base such that base .. base+width-1 were never used."""
        base = self._next
        self._next += width
        return base


def _warm_up(system, client, ctx):
    from . import tasks

    pids = system.run(client, tasks.getpid)
    if len(set(pids.values())) != 2 or os.getpid() in pids.values():
        raise AssertionError(f"expected 2 worker processes apart from the client (pid {os.getpid()}), "
                             f"client.run(getpid) gave {pids}")
    ran_in = system.submit(client, tasks.getpid).result()
    if ran_in not in pids.values():
        raise AssertionError(f"a submitted task ran in pid {ran_in}, not in a worker {pids}")
    ctx.rec.info(worker_pids=pids)
    base = ctx.unique(20)
    res = system.gather(client, [system.submit(client, tasks.add, base + i, 1) for i in range(20)])
    if list(res) != [base + i + 1 for i in range(20)]:
        raise AssertionError(f"warm-up returned wrong results: {res!r}")


def run(system_name, workload_id, mode, out):
    rec = Recorder(out, system_name, workload_id)
    t0 = time.perf_counter()
    try:
        system = make_system(system_name)
    except BaseException as exc:
        rec.data["import_error"] = True
        rec.error("*", exc)
        return 3
    rec.data["versions"] = system.versions()
    rec.info(import_s=time.perf_counter() - t0)
    wl = WORKLOADS[workload_id]
    log = sys.stderr
    try:
        if not wl.shared_cluster:
            wl.fn(Context(system, None, mode, rec, log))
            return 0
        t0 = time.perf_counter()
        with system.local_cluster() as cluster:
            with system.client(cluster) as client:
                ctx = Context(system, client, mode, rec, log)
                addrs = system.wait_for_workers(client, 2)
                rec.info(cluster_start_s=time.perf_counter() - t0, workers=addrs)
                _warm_up(system, client, ctx)
                wl.fn(ctx)
                t_close = time.perf_counter()
        rec.info(cluster_close_s=time.perf_counter() - t_close)
    except BaseException as exc:
        measured = set(rec.data["metrics"])
        if all(m.id in measured for m in metrics_of(workload_id)):
            rec.error("teardown", exc)  # the numbers stand; report the close failure apart
        else:
            rec.error("*", exc)
        return 1
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.child")
    ap.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--mode", default="default", choices=sorted(REPEATS))
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    assert {m.workload for m in METRICS} <= set(WORKLOADS)
    rc = run(a.system, a.workload, a.mode, a.out)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a half-built engine may leave threads running.
    os._exit(rc)


if __name__ == "__main__":
    main()
