"""Does the dashboard cost the hot path anything?  The seed workloads, dashboard off and on.

    python -m benchmarks.dashboard_overhead                 # W1-W5, 3 rounds, about 2 minutes
    python -m benchmarks.dashboard_overhead --rounds 1 --only W1,W4 --modes off,watched

Each round starts, for every mode, a fresh cluster of the standard shape (a scheduler process
and 2 worker processes with 1 thread each, on 127.0.0.1) and runs the workloads of
``benchmarks.workloads`` against it from this process, in the ``quick`` repeat counts (or
``--repeats default``):

- ``off``: the scheduler serves no dashboard;
- ``on``: the scheduler serves the dashboard (``start_dashboard``), nobody watches;
- ``watched``: as ``on``, with headless chromium showing ``/status`` (or ``--page``; plots
  refreshing twice a second) and ``/metrics`` scraped every second, from processes of their
  own.

Modes alternate within each round, so a drift of the machine hits them alike. The table gives
the median over rounds of each metric and its ratio to ``off`` (for times, off / mode; for
rates, mode / off: either way 1.00 means "as fast", below 1 slower).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request

from .child import Context, Recorder, _warm_up
from .systems import NbclusterSystem, child_env
from .workloads import METRIC_BY_ID, REPEATS, WORKLOADS, metrics_of

MODES = ("off", "on", "watched")
SEED = ("W1", "W2", "W3", "W4", "W5")
START_TIMEOUT = 30.0


# --------------------------------------------------------------------------- children
def _serve_scheduler(dashboard: bool) -> None:
    """A scheduler process like LocalCluster's, optionally with the dashboard."""
    from nbcluster.server.scheduler import Scheduler

    gc.freeze()
    gc.set_threshold(10_000, 20, 20)

    async def main() -> None:
        scheduler = await Scheduler("tcp://127.0.0.1:0",
                                    token=os.environ["NBCLUSTER_TOKEN"]).start()
        dash = None
        if dashboard:
            from nbcluster.dashboard.server import start_dashboard

            dash = start_dashboard(scheduler, host="127.0.0.1", port=0)
        print(f"ADDRESS {scheduler.address}", flush=True)
        if dash is not None:
            print(f"DASHBOARD {dash.link}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        if dash is not None:
            dash.stop()
        await scheduler.close()

    asyncio.run(main())


def _watch(link: str) -> None:
    """Show ``link`` in headless chromium and scrape ``/metrics`` every second until stdin
    closes; print WATCHING once the page shows tasks."""
    from playwright.sync_api import sync_playwright

    metrics = link.rsplit("/", 1)[0] + "/metrics"
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(link)
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0 && "
                               "Bokeh.documents[0].roots().length > 0", timeout=60_000)
        print("WATCHING", flush=True)
        while not stop.wait(1.0):
            urllib.request.urlopen(metrics, timeout=10).read()
        ctx.close()


# --------------------------------------------------------------------------- a cluster
def _read_line(proc: subprocess.Popen, prefix: str, what: str) -> str:
    """The rest of the first line of ``proc``'s output that starts with ``prefix``."""
    timer = threading.Timer(START_TIMEOUT, proc.kill)   # readline itself has no timeout
    timer.start()
    try:
        while True:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"{what} exited (code {proc.poll()}) before saying {prefix} "
                                   f"(killed after {START_TIMEOUT:g} s if it said nothing)")
            word, _, rest = line.strip().partition(" ")
            if word == prefix:
                return rest
    finally:
        timer.cancel()


class Cluster:
    """Scheduler + 2 workers as processes; ``mode`` as in the module's docstring."""

    def __init__(self, mode: str, page: str = "status") -> None:
        from nbcluster.comm.auth import new_token

        self.mode = mode
        self.page = page
        self.token = new_token()
        self.dashboard_link = None
        self.procs: list[subprocess.Popen] = []
        env, self.root = child_env()
        self.env = dict(env, NBCLUSTER_TOKEN=self.token)

    def _spawn(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=self.env, cwd=self.root,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Cluster:
        try:
            args = ["-m", "benchmarks.dashboard_overhead", "scheduler"]
            sched = self._spawn(*args, *(["--dashboard"] if self.mode != "off" else []))
            workers = [self._spawn("-m", "nbcluster.deploy.spawn", "worker", "--nthreads", "1",
                                   "--name", f"worker-{i}") for i in range(2)]
            self.scheduler_address = _read_line(sched, "ADDRESS", "the scheduler")
            if self.mode != "off":
                self.dashboard_link = _read_line(sched, "DASHBOARD", "the scheduler")
            for w in workers:
                w.stdin.write(self.scheduler_address.encode() + b"\n")
                w.stdin.flush()
            for w in workers:
                _read_line(w, "ADDRESS", "a worker")
            if self.mode == "watched":
                link = self.dashboard_link.replace("/status", f"/{self.page}")
                watcher = self._spawn("-m", "benchmarks.dashboard_overhead", "watch", link)
                _read_line(watcher, "WATCHING", "the browser")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):     # the watcher first, the scheduler last
            with contextlib.suppress(OSError):
                p.stdin.close()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            with contextlib.suppress(OSError):
                p.stdout.close()


class _System(NbclusterSystem):
    """The benchmark adapter, on a cluster this module started."""

    def __init__(self, mode: str, page: str = "status") -> None:
        super().__init__()
        self.mode = mode
        self.page = page

    def local_cluster(self):
        return Cluster(self.mode, self.page)


# --------------------------------------------------------------------------- the runs
def run_mode(mode: str, workloads: list[str], out_dir: str, page: str,
             repeats: str = "quick") -> dict[str, float]:
    system = _System(mode, page)
    values: dict[str, float] = {}
    with system.local_cluster() as cluster, system.client(cluster) as client:
        for wid in workloads:
            path = os.path.join(out_dir, f"{mode}-{wid}.json")
            rec = Recorder(path, "nbcluster", wid)
            ctx = Context(system, client, repeats, rec, sys.stderr)
            if wid == workloads[0]:
                system.wait_for_workers(client, 2)
                _warm_up(system, client, ctx)
            WORKLOADS[wid].fn(ctx)
            for mid, entry in rec.data["metrics"].items():
                if "value" in entry:
                    values[mid] = entry["value"]
            if rec.data["errors"]:
                raise RuntimeError(f"{mode} {wid}: {rec.data['errors']}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dashboard_overhead")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("scheduler")
    s.add_argument("--dashboard", action="store_true")
    w = sub.add_parser("watch")
    w.add_argument("link")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(SEED), help="workloads, e.g. W1,W4")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=None, help="also write every round's numbers here")
    ap.add_argument("--page", default="status", help="the page the browser shows (watched)")
    ap.add_argument("--repeats", default="quick", choices=sorted(REPEATS),
                    help="repeat counts of benchmarks.workloads (default: quick)")
    a = ap.parse_args(argv)
    if a.cmd == "scheduler":
        _serve_scheduler(a.dashboard)
        return 0
    if a.cmd == "watch":
        _watch(a.link)
        return 0
    workloads = [x.strip() for x in a.only.split(",") if x.strip()]
    modes = [x.strip() for x in a.modes.split(",") if x.strip()]
    if "off" not in modes:
        modes.insert(0, "off")
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="nbcluster-dash-bench-") as out_dir:
        for r in range(a.rounds):
            results = {}
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                print(f"round {r + 1}/{a.rounds}: {mode}", file=sys.stderr, flush=True)
                results[mode] = run_mode(mode, workloads, out_dir, a.page, a.repeats)
            rounds.append(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rounds, f, indent=1)
    print(report(rounds, modes, workloads))
    return 0


def report(rounds: list, modes: list[str], workloads: list[str]) -> str:
    mids = [m.id for wid in workloads for m in metrics_of(wid)
            if all(m.id in r[mode] for r in rounds for mode in modes)]
    head = "| metric | " + " | ".join(modes) + " | " + " | ".join(
        f"{m} vs off" for m in modes if m != "off") + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(modes) - 1)]
    for mid in mids:
        meta = METRIC_BY_ID[mid]
        med = {mode: statistics.median(r[mode][mid] for r in rounds) for mode in modes}
        cells = [meta.fmt.format(med[mode]) + f" {meta.unit}" for mode in modes]
        ratios = []
        for mode in modes:
            if mode == "off":
                continue
            ratio = (med[mode] / med["off"]) if meta.higher_is_better else (med["off"] / med[mode])
            ratios.append(f"{ratio:.2f}")
        lines.append(f"| {meta.label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + (f"\n\nmedian of {len(rounds)} rounds; ratio 1.00 = as fast as "
                               "off, below 1 = slower")


if __name__ == "__main__":
    sys.exit(main())
