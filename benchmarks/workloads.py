"""The workloads W1-W8, written once against the :class:`~benchmarks.systems.System` adapter.

Each workload is a function ``fn(ctx)``; ``ctx`` carries the system adapter,
the client of the shared cluster (W1-W6; W7 and W8 build their own), the
repeat counts of the mode, a recorder and a counter that keeps task
arguments unique (so dask's ``pure=True`` key hashing can never hand back a
result left in memory by an earlier call: every timed task really runs).

A metric is recorded inside ``with ctx.rec.measuring(metric_id):`` so that a
failure in one measurement is reported in its cell and the next one still runs.
"""

import statistics
import subprocess
import sys
import time
from collections import namedtuple
from time import perf_counter

from . import tasks
from .systems import HOST, N_WORKERS, child_env, free_port, wait_for_port

Metric = namedtuple("Metric", "id workload label unit higher_is_better fmt")

METRICS = [
    Metric("W1.median", "W1", "round trip `submit(add).result()`, median of 200", "ms", False, "{:.2f}"),
    Metric("W1.p99", "W1", "round trip, p99 of 200", "ms", False, "{:.2f}"),
    Metric("W2.time", "W2", "1,000 `submit(add, i, i)` then `gather`", "ms", False, "{:.0f}"),
    Metric("W3.time", "W3", "chord: 100 adds then `submit(sum, futures)`", "ms", False, "{:.1f}"),
    Metric("W4.1000", "W4", "`map(inc, range(N))` + gather, N=1,000", "tasks/s", True, "{:,.0f}"),
    Metric("W4.10000", "W4", "`map(inc, range(N))` + gather, N=10,000", "tasks/s", True, "{:,.0f}"),
    Metric("W4.100000", "W4", "`map(inc, range(N))` + gather, N=100,000", "tasks/s", True, "{:,.0f}"),
    Metric("W5.time", "W5", "chain of 200 dependent `inc`", "ms", False, "{:.0f}"),
    Metric("W6.transfer", "W6", "200 MB A->B transfer (pinned sum on B minus sum on A)", "MB/s", True, "{:,.0f}"),
    Metric("W6.e2e", "W6", "200 MB pinned sum on B, end to end", "MB/s", True, "{:,.0f}"),
    Metric("W6.first", "W6", "first 200 MB A->B transfer of the run (cold memory, new connection)", "MB/s", True, "{:,.0f}"),
    Metric("W7.inproc", "W7", "new LocalCluster(2x1) -> first result (library imported)", "s", False, "{:.2f}"),
    Metric("W7.fresh", "W7", "new interpreter -> import -> LocalCluster -> first result", "s", False, "{:.2f}"),
    Metric("W8.bytes", "W8", "scheduler RSS per pending task (100,000 waiting)", "B/task", False, "{:,.0f}"),
    Metric("W8.accept", "W8", "time for the scheduler to take 100,000 pending tasks", "s", False, "{:.1f}"),
]
METRIC_BY_ID = {m.id: m for m in METRICS}

# Repeat counts.  "full" is "default" plus dask at N=100,000 in W4.
REPEATS = {
    "quick": dict(w1_warm=20, w1_calls=200, w2=3, w3=5, w4={1_000: 3, 10_000: 1},
                  w5=3, w6=3, w7_inproc=2, w7_fresh=1, w8_n=100_000),
    "default": dict(w1_warm=20, w1_calls=200, w2=5, w3=10, w4={1_000: 5, 10_000: 3, 100_000: 1},
                    w5=5, w6=5, w7_inproc=3, w7_fresh=3, w8_n=100_000),
}
REPEATS["full"] = REPEATS["default"]
DASK_W4_CAP = 10_000

W6_ITEMS = 25_000_000  # float64 -> 200,000,000 bytes = 200 MB
W6_MB = W6_ITEMS * 8 / 1e6
W8_GATE_SECONDS = 3600  # never finishes: the processes are stopped first


def med(xs):
    return statistics.median(xs)


def p99(xs):
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


def _check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: wrong result {got!r}, expected {want!r}")


# --------------------------------------------------------------------------- W1
def w1_round_trip(ctx):
    s, c, r = ctx.system, ctx.client, ctx.reps
    with ctx.rec.measuring("W1.median", "W1.p99"):
        for _ in range(r["w1_warm"]):
            k = ctx.unique()
            _check(s.submit(c, tasks.add, 1, k).result(), k + 1, "W1 warm-up")
        samples = []
        for _ in range(r["w1_calls"]):
            k = ctx.unique()
            t0 = perf_counter()
            res = s.submit(c, tasks.add, 1, k).result()
            samples.append(perf_counter() - t0)
            _check(res, k + 1, "W1")
        ms = [x * 1e3 for x in samples]
        ctx.rec.value("W1.median", med(ms), ms)
        ctx.rec.value("W1.p99", p99(ms))


# --------------------------------------------------------------------------- W2
def w2_submit_gather(ctx):
    s, c = ctx.system, ctx.client
    with ctx.rec.measuring("W2.time"):
        samples = []
        for rep in range(ctx.reps["w2"] + 1):  # the first round is a warm-up
            base = ctx.unique(1000)
            t0 = perf_counter()
            futs = [s.submit(c, tasks.add, base + i, base + i) for i in range(1000)]
            res = s.gather(c, futs)
            dt = perf_counter() - t0
            _check(list(res), [2 * (base + i) for i in range(1000)], "W2")
            del futs, res
            if rep:
                samples.append(dt * 1e3)
        ctx.rec.value("W2.time", med(samples), samples)


# --------------------------------------------------------------------------- W3
def w3_chord(ctx):
    s, c = ctx.system, ctx.client
    with ctx.rec.measuring("W3.time"):
        samples = []
        for rep in range(ctx.reps["w3"] + 1):
            base = ctx.unique(100)
            t0 = perf_counter()
            futs = [s.submit(c, tasks.add, base + i, base + i) for i in range(100)]
            total = s.submit(c, sum, futs).result()
            dt = perf_counter() - t0
            _check(total, sum(2 * (base + i) for i in range(100)), "W3")
            del futs
            if rep:
                samples.append(dt * 1e3)
        ctx.rec.value("W3.time", med(samples), samples)


# --------------------------------------------------------------------------- W4
def w4_throughput(ctx):
    s, c = ctx.system, ctx.client
    plan = ctx.reps["w4"]
    # warm-up round, not recorded
    base = ctx.unique(1000)
    s.gather(c, s.map(c, tasks.inc, range(base, base + 1000)))
    for n in (1_000, 10_000, 100_000):
        mid = f"W4.{n}"
        if n not in plan:
            ctx.rec.skip(mid, "skipped (--quick)")
            continue
        if s.name == "dask" and n > DASK_W4_CAP and ctx.mode != "full":
            ctx.rec.skip(mid, f"not run: dask capped at {DASK_W4_CAP:,} (use --full)")
            continue
        with ctx.rec.measuring(mid):
            rates = []
            for _ in range(plan[n]):
                base = ctx.unique(n)
                t0 = perf_counter()
                futs = s.map(c, tasks.inc, range(base, base + n))
                res = s.gather(c, futs)
                dt = perf_counter() - t0
                res = list(res)
                if len(res) != n or res[0] != base + 1 or res[-1] != base + n:
                    raise AssertionError(f"W4 N={n}: wrong results")
                del futs, res
                rates.append(n / dt)
            ctx.rec.value(mid, med(rates), rates)


# --------------------------------------------------------------------------- W5
def w5_chain(ctx):
    s, c = ctx.system, ctx.client
    with ctx.rec.measuring("W5.time"):
        samples = []
        for rep in range(ctx.reps["w5"] + 1):
            x0 = ctx.unique(1000)
            t0 = perf_counter()
            x = s.submit(c, tasks.inc, x0)
            for _ in range(199):
                x = s.submit(c, tasks.inc, x)
            res = x.result()
            dt = perf_counter() - t0
            _check(res, x0 + 200, "W5")
            del x
            if rep:
                samples.append(dt * 1e3)
        ctx.rec.value("W5.time", med(samples), samples)


# --------------------------------------------------------------------------- W6
def _w6_once(ctx, a_addr, b_addr, n_items):
    s, c = ctx.system, ctx.client
    tag = ctx.unique()  # a new array (and new task keys) for every repeat
    value = tag % 7 + 1  # small integer: the float sum is exact
    arr = s.submit(c, tasks.make_array, n_items, value, tag, workers=[a_addr])
    _check(s.submit(c, tasks.array_nbytes, arr, ctx.unique(), workers=[a_addr]).result(),
           n_items * 8, "W6 array on A")
    want = float(n_items) * value
    t0 = perf_counter()
    _check(s.submit(c, tasks.array_sum, arr, ctx.unique(), workers=[a_addr]).result(), want, "W6 sum on A")
    t_local = perf_counter() - t0
    t0 = perf_counter()
    _check(s.submit(c, tasks.array_sum, arr, ctx.unique(), workers=[b_addr]).result(), want, "W6 sum on B")
    t_remote = perf_counter() - t0
    del arr
    return t_local, t_remote


def w6_transfer(ctx):
    with ctx.rec.measuring("W6.transfer", "W6.e2e", "W6.first"):
        addrs = ctx.system.worker_addresses(ctx.client)
        if len(addrs) < 2:
            raise RuntimeError(f"need 2 workers, client.run listed {addrs}")
        a_addr, b_addr = addrs[0], addrs[1]
        # The first transfer opens the A<->B connection and maps fresh memory on B: it is
        # reported on its own (one sample) and kept out of the medians.
        l0, r0 = _w6_once(ctx, a_addr, b_addr, W6_ITEMS)
        ctx.rec.value("W6.first", W6_MB / max(r0 - l0, 1e-9), [W6_MB / max(r0 - l0, 1e-9)])
        time.sleep(1.0)
        locs, rems = [], []
        for _ in range(ctx.reps["w6"]):
            t_local, t_remote = _w6_once(ctx, a_addr, b_addr, W6_ITEMS)
            locs.append(t_local)
            rems.append(t_remote)
            time.sleep(1.0)  # let both workers free the previous copies
        transfer = [W6_MB / max(r - l, 1e-9) for l, r in zip(locs, rems)]
        e2e = [W6_MB / r for r in rems]
        ctx.rec.value("W6.transfer", med(transfer), transfer)
        ctx.rec.value("W6.e2e", med(e2e), e2e)
        ctx.rec.info(w6={"A": a_addr, "B": b_addr, "sum_on_A_s": locs, "sum_on_B_s": rems})


# --------------------------------------------------------------------------- W7
def w7_cold_start(ctx):
    s = ctx.system
    with ctx.rec.measuring("W7.inproc"):
        starts, closes = [], []
        for _ in range(ctx.reps["w7_inproc"]):
            t0 = perf_counter()
            with s.local_cluster() as cluster, s.client(cluster) as client:
                _check(s.submit(client, tasks.add, 1, 1).result(), 2, "W7")
                t1 = perf_counter()
            closes.append(perf_counter() - t1)
            starts.append(t1 - t0)
        ctx.rec.value("W7.inproc", med(starts), starts)
        ctx.rec.info(w7_close_s=closes)
    with ctx.rec.measuring("W7.fresh"):
        env, root = child_env()
        samples = []
        for _ in range(ctx.reps["w7_fresh"]):
            samples.append(_fresh_first_result(s.name, env, root, ctx.log))
        ctx.rec.value("W7.fresh", med(samples), samples)


def _fresh_first_result(name, env, root, log):
    t0 = perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.coldstart", name], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        for line in p.stdout:
            if line.startswith("FIRST_RESULT"):
                dt = perf_counter() - t0
                break
        else:
            raise RuntimeError(f"coldstart child exited (rc={p.wait()}) without a result")
        p.wait(timeout=60)
        return dt
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------- W8
def _rss_tree(pid):
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for ch in proc.children(recursive=True):
        try:
            total += ch.memory_info().rss
        except psutil.Error:
            pass
    return total


def _stable_rss(pid, timeout=60.0, window=8, tol=0.002):
    """RSS once the last ``window`` samples (0.25 s apart) agree within ``tol``."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples.append(_rss_tree(pid))
        last = samples[-window:]
        if len(last) == window and (max(last) - min(last)) <= tol * max(last):
            return last[-1]
        time.sleep(0.25)
    return samples[-1]


def w8_pending_memory(ctx):
    s, n = ctx.system, ctx.reps["w8_n"]
    env, root = child_env()
    port = free_port()
    address = f"tcp://{HOST}:{port}"
    procs = []

    def start(cmd):
        procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=ctx.log, stderr=ctx.log))
        return procs[-1]

    try:
        with ctx.rec.measuring("W8.bytes", "W8.accept"):
            sched = start(s.scheduler_cmd(port))
            wait_for_port(port, 60, sched)
            for _ in range(N_WORKERS):
                start(s.worker_cmd(address))
            with s.client(address) as c:
                s.wait_for_workers(c, N_WORKERS)
                base = ctx.unique(2000)  # warm-up of the scheduler's code paths
                s.gather(c, s.map(c, tasks.inc, range(base, base + 2000)))
                gate = s.submit(c, tasks.sleep_gate, W8_GATE_SECONDS)
                time.sleep(1.0)
                before = _stable_rss(sched.pid)
                base = ctx.unique(n)
                t0 = perf_counter()
                futs = s.map(c, tasks.add, [gate] * n, range(base, base + n))
                # Probe: a task submitted after the batch; then, where the
                # system can tell, wait until the scheduler holds every task.
                k = ctx.unique()
                _check(s.submit(c, tasks.add, 1, k).result(), k + 1, "W8 probe")
                counted = s.wait_scheduler_tasks(c, n, timeout=120)
                accept = perf_counter() - t0
                after = _stable_rss(sched.pid)
                ctx.rec.value("W8.bytes", (after - before) / n)
                ctx.rec.value("W8.accept", accept)
                ctx.rec.info(w8={"n": n, "rss_before": before, "rss_after": after,
                                 "scheduler_pid": sched.pid, "scheduler_task_count_checked": counted})
                del futs, gate
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------
Workload = namedtuple("Workload", "id title fn shared_cluster")
WORKLOADS = {
    "W1": Workload("W1", "round trip", w1_round_trip, True),
    "W2": Workload("W2", "1,000 submits + gather", w2_submit_gather, True),
    "W3": Workload("W3", "chord", w3_chord, True),
    "W4": Workload("W4", "map throughput", w4_throughput, True),
    "W5": Workload("W5", "chain of 200", w5_chain, True),
    "W6": Workload("W6", "200 MB transfer", w6_transfer, True),
    "W7": Workload("W7", "cold start", w7_cold_start, False),
    "W8": Workload("W8", "scheduler memory per pending task", w8_pending_memory, False),
}


def metrics_of(workload_id):
    return [m for m in METRICS if m.workload == workload_id]
