"""One scheduler, many workers, many tasks, many clients (issue 14, parts 2-5).

    python -m benchmarks.scale_cluster                   # everything, about 10 minutes
    python -m benchmarks.scale_cluster --full            # also dask at 10^6 tasks (5 minutes more)
    python -m benchmarks.scale_cluster --quick           # smaller sizes, about 5 minutes
    python -m benchmarks.scale_cluster --parts 2,idle --no-dask --time-limit 60

Part 1, the pure state machine, is ``python -m benchmarks.scale``. Here a real scheduler
process (each system's command line, on 127.0.0.1) serves workers and clients:

2. W4-style throughput, ``gather(map(inc, range(N)))``, with 2, 32 and 128 workers, in-process
   workers in a few host processes (see ``scale_hosts``); nbcluster also with 100 worker
   processes.
3. ``map(inc, range(N))`` + gather for N = 10^4, 10^5, 10^6 (``--quick``: up to 10^5):
   tasks/s, and the scheduler's and the client's peak RSS growth per task.
4. A tree reduction of 100,000 leaves (``sum`` of 8 futures a task) and a 1,000 x 1,000
   all-to-all graph (1,000 tasks, then 1,000 tasks each taking all 1,000): submit to result.
5. 100 clients at once, each ``map`` of 100 tasks then ``gather``.
idle: the scheduler's CPU with 128 and 1,000 idle workers connected (heartbeats only).

Parts 3-5 use 2 workers with 1 thread each, like ``python -m benchmarks``. Every measurement
runs in a fresh ``python -m benchmarks.scale_cases`` child in a session of its own, which is
killed as a whole afterwards (its scheduler and hosts with it), also on Ctrl-C. A measurement
that runs out of ``--time-limit`` reports what it did within it. Tables go to stdout (markdown),
progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from . import report
from .runner import _stop_group
from .systems import child_env

PARTS = ("2", "3", "4", "5", "idle")
# a million tasks take nbcluster about a minute here: these cases get this many time limits
LIMIT_FACTOR = {"p3:1000000": 3}
# dask's map call alone takes ~18 s for 10^6 tasks here, and then ~2 tasks/s: minutes
FULL_ONLY = {("dask", "p3:1000000")}
PART_OF = {"p2": "2", "p2proc": "2", "p3": "3", "p4tree": "4", "p4a2a": "4", "p5": "5",
           "idle": "idle"}
SYSTEMS = ("nbcluster", "dask")


def plan(parts: list[str], quick: bool, systems: list[str],
         full: bool = False) -> list[tuple[str, str, str]]:
    """(part, system, case) for every measurement, in the order they run."""
    n2 = 10_000 if quick else 50_000
    cases: dict[str, list[tuple[str, tuple[str, ...]]]] = {
        "2": [(f"p2:{w}:{h}:{n2}", SYSTEMS) for w, h in ((2, 2), (32, 4), (128, 4))]
        + [(f"p2proc:100:{n2}", ("nbcluster",))],
        "3": [(f"p3:{n}", SYSTEMS) for n in (10_000, 100_000, 1_000_000)
              if not (quick and n > 100_000)],
        "4": [("p4tree:100000", SYSTEMS), ("p4a2a:1000", SYSTEMS)],
        "5": [("p5:100:100", SYSTEMS)],
        "idle": [("idle:128:4", SYSTEMS), ("idle:1000:8", SYSTEMS)],
    }
    return [(part, s, case) for part in parts for case, allowed in cases[part]
            for s in systems if s in allowed and (full or (s, case) not in FULL_ONLY)]


# --------------------------------------------------------------------------- children
def run_child(system: str, case: str, time_limit: float, logdir: str) -> dict[str, Any]:
    """Run one measurement in a new session; whatever it leaves running is stopped."""
    env, root = child_env()
    tag = f"{system}-{case.replace(':', '_')}"
    out, log = os.path.join(logdir, tag + ".json"), os.path.join(logdir, tag + ".log")
    # the child's own bound: start-up (1,000 workers, a 10^6 map call) plus the time limit
    hard = 2 * time_limit + 120
    cmd = [sys.executable, "-m", "benchmarks.scale_cases", system, case, str(time_limit),
           out, str(hard)]
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, cwd=root, env=env, stdout=lf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        killed = False
        try:
            p.wait(timeout=hard + 30)
        except subprocess.TimeoutExpired:
            killed = True
        finally:   # also on Ctrl-C: the child, its scheduler and its hosts go
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            _stop_group(p.pid, grace=1.0)
    try:
        with open(out) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        rec = {"metrics": {}, "notes": [], "status": "error",
               "error": f"no result (rc={p.returncode}); log: {log}"}
    if killed:
        rec["status"] = "timeout"
        rec["notes"].append(f"killed after {hard + 30:.0f} s")
    rec["log"] = log
    return rec


# --------------------------------------------------------------------------- tables
def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _cell(rec: dict | None, key: str, fmt: str) -> str:
    """A figure, marked when the measurement ran out of time or failed."""
    if rec is None:
        return "not run"
    if rec.get("status") == "error" and key not in rec["metrics"]:
        return "error (see notes)"
    text = _num(rec["metrics"].get(key), fmt)
    if rec.get("status") == "timeout" and key in ("rate", "elapsed_s"):
        text += " (timeout)"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def render(results: dict[tuple[str, str], dict], systems: list[str], parts: list[str],
           cases: list[tuple[str, str, str]]) -> str:
    out: list[str] = []
    got = lambda s, c: results.get((s, c))
    ordered = list(dict.fromkeys((part, case) for part, _, case in cases))
    by_part: dict[str, list[str]] = {}
    for part, case in ordered:
        by_part.setdefault(part, []).append(case)

    def section(title: str, header: list[str], row: Callable[[str, str, dict | None], list[str]],
                part: str) -> None:
        rows = [row(s, case, got(s, case)) for case in by_part.get(part, []) for s in systems
                if (s, case) in results]
        if rows:
            out.extend([f"**{title}**", "", _table(header, rows), ""])

    def p2(s: str, case: str, r: dict | None) -> list[str]:
        kind, w, *rest = case.split(":")
        layout = f"{w} processes" if kind == "p2proc" else f"{w} in {rest[0]} host processes"
        return [f"{int(w):,}", layout, s, f"{int(rest[-1]):,}", _cell(r, "start_s", "{:.1f}"),
                _cell(r, "rate", "{:,.0f}")] + _cpu(r)

    def p3(s: str, case: str, r: dict | None) -> list[str]:
        return [f"{int(case.split(':')[1]):,}", s, _cell(r, "rate", "{:,.0f}"),
                _cell(r, "elapsed_s", "{:.1f}"), _cell(r, "map_call_s", "{:.1f}"),
                _cell(r, "scheduler_bytes_per_task", "{:,.0f}"),
                _cell(r, "client_bytes_per_task", "{:,.0f}")] + _cpu(r)

    def _cpu(r: dict | None) -> list[str]:
        return [_cell(r, k, "{:.0f}") for k in ("scheduler_cpu_pct", "workers_cpu_pct",
                                                "client_cpu_pct")]

    def p4(s: str, case: str, r: dict | None) -> list[str]:
        kind, n = case.split(":")
        what = f"tree, {int(n):,} leaves, fan-in 8" if kind == "p4tree" else \
            f"all-to-all {int(n):,} x {int(n):,}"
        return [what, s, _cell(r, "tasks", "{:,}"), _cell(r, "submit_s", "{:.2f}"),
                _cell(r, "elapsed_s", "{:.2f}"), _cell(r, "rate", "{:,.0f}")]

    def p5(s: str, case: str, r: dict | None) -> list[str]:
        _, n, t = case.split(":")
        return [f"{int(n)} x {int(t)}", s, _cell(r, "connect_s", "{:.2f}"),
                _cell(r, "elapsed_s", "{:.2f}"), _cell(r, "rate", "{:,.0f}"),
                _cell(r, "close_s", "{:.2f}")]

    def idle(s: str, case: str, r: dict | None) -> list[str]:
        _, w, h, *_ = case.split(":")
        reached = (r or {}).get("metrics", {}).get("workers_connected")
        return [f"{int(w):,} in {h}", s, "—" if reached is None else f"{reached:,}",
                _cell(r, "start_s", "{:.1f}"), _cell(r, "scheduler_cpu_pct", "{:.1f}"),
                _cell(r, "hosts_cpu_pct", "{:.0f}"), _cell(r, "scheduler_rss_mb", "{:,.0f}"),
                _cell(r, "hosts_rss_mb", "{:,.0f}")]

    section("Part 2: W4-style throughput, `gather(map(inc, range(N)))`, many workers",
            ["workers", "layout", "system", "N", "start (s)", "tasks/s", "CPU % scheduler", "workers", "client"], p2, "2")
    section("Part 3: `map(inc, range(N))` + gather, 2 workers; peak RSS growth per task",
            ["N", "system", "tasks/s", "time (s)", "map call (s)", "scheduler B/task",
             "client B/task", "CPU % scheduler", "workers", "client"], p3, "3")
    section("Part 4: graphs, submit to result, 2 workers",
            ["graph", "system", "tasks", "submit (s)", "submit to result (s)", "tasks/s"],
            p4, "4")
    section("Part 5: many clients at once (threads of one process), 2 workers",
            ["clients x tasks", "system", "connect all (s)", "all gathered (s)", "tasks/s",
             "close all (s)"], p5, "5")
    section("Idle: heartbeats only, CPU over a 10 s window",
            ["workers (hosts)", "system", "connected", "start (s)", "scheduler CPU %",
             "hosts CPU %", "scheduler RSS MB", "hosts RSS MB"], idle, "idle")
    notes = []
    for (s, case), r in results.items():
        for n in r.get("notes", []):
            notes.append(f"{s} `{case}`: {n}")
        if r.get("status") == "error":
            notes.append(f"{s} `{case}`: {r.get('error')}")
    if notes:
        out.extend(["Notes from the run:", ""] + [f"- {n}" for n in notes] + [""])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_cluster",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--quick", action="store_true", help="N=10,000 in part 2, no 10^6 in part 3")
    ap.add_argument("--full", action="store_true", help="also dask at N=10^6 in part 3 "
                    "(about 5 minutes more)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma separated, from {','.join(PARTS)} (default: all)")
    ap.add_argument("--no-dask", action="store_true", help="nbcluster only")
    ap.add_argument("--time-limit", type=float, default=30.0,
                    help="seconds for the timed part of each measurement (default: 30)")
    ap.add_argument("--only", default="",
                    help="run these cases instead, any size, e.g. p3:20000,idle:500:4 "
                    "(see benchmarks/scale_cases.py for the forms)")
    ap.add_argument("--json", default=None, help="also write every record to this file")
    ap.add_argument("--logs", default=None, help="folder for the logs (default: a new one)")
    ap.add_argument("--render", default=None, metavar="JSON[,JSON...]",
                    help="run nothing: print the tables of earlier --json files (later win)")
    a = ap.parse_args(argv)
    if a.render:
        return _render_saved(a.render.split(","))
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {','.join(PARTS)}")
    systems = ["nbcluster"] if a.no_dask else list(SYSTEMS)
    cases = plan(parts, a.quick, systems, a.full)
    if a.only:
        wanted = [c.strip() for c in a.only.split(",") if c.strip()]
        bad = [c for c in wanted if c.split(":")[0] not in PART_OF]
        if bad:
            ap.error(f"unknown case(s) {bad}; the forms are in benchmarks/scale_cases.py")
        cases = [(PART_OF[c.split(":")[0]], s, c) for c in wanted for s in systems
                 if s == "nbcluster" or not c.startswith("p2proc")]
        parts = list(dict.fromkeys(part for part, _, _ in cases))
    logdir = a.logs or tempfile.mkdtemp(prefix="nbcluster-scale-")
    os.makedirs(logdir, exist_ok=True)
    load_start, t_start = report.loadavg(), time.monotonic()
    # SIGTERM as Ctrl-C: the running child's session is killed on the way out either way
    previous = signal.signal(signal.SIGTERM, _interrupt)
    results: dict[tuple[str, str], dict] = {}
    print(f"scale_cluster: {len(cases)} measurements, time limit {a.time_limit:g} s each, "
          f"logs in {logdir}", file=sys.stderr, flush=True)
    try:
        for k, (part, system, case) in enumerate(cases, 1):
            t0 = time.monotonic()
            print(f"[{k:2d}/{len(cases)}] {system} {case} ...", file=sys.stderr, flush=True)
            rec = run_child(system, case, a.time_limit * LIMIT_FACTOR.get(case, 1), logdir)
            results[(system, case)] = rec
            shown = {key: round(v, 3) if isinstance(v, float) else v
                     for key, v in rec["metrics"].items() if key != "scheduler_pid"}
            print(f"        {time.monotonic() - t0:5.1f} s {rec['status']} {shown} "
                  f"{rec.get('error', '')} {' '.join(rec.get('notes', []))}",
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: the tables show what was measured", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    machine = report.machine_info()
    versions = {r.get("system"): r.get("version") for r in results.values() if r.get("version")}
    command = "python -m benchmarks.scale_cluster" + (" " + " ".join(
        sys.argv[1:] if argv is None else argv) if (argv or sys.argv[1:]) else "")
    print(f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` in "
          f"{time.monotonic() - t_start:.0f} s; time limit {a.time_limit:g} s a measurement"
          + "".join(f", {a.time_limit * k:g} s for {c}" for c, k in LIMIT_FACTOR.items()
                    if any(c == case for _, _, case in cases)) + ".")
    print()
    print(f"- Machine: {machine['cpus_usable']} CPUs usable, {machine['cpu_model']}, "
          f"{machine['memory_gib']} GiB RAM, {machine['platform']}; 1-minute load average "
          f"{load_start} at the start, {report.loadavg()} at the end")
    print(f"- Versions: python {sys.version.split()[0]}, " + ", ".join(
        f"{k} {v}" for k, v in sorted(versions.items())))
    print()
    print(render(results, systems, parts, cases))
    skipped = [f"{s} `{c}`" for s, c in sorted(FULL_ONLY) if s in systems and not a.full
               and not a.only and PART_OF[c.split(":")[0]] in parts
               and not (a.quick and c == "p3:1000000")]
    if skipped:
        print(f"Not run without --full: {', '.join(skipped)}.")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{s} {c}": r for (s, c), r in results.items()}, f, indent=1)
    print(f"logs: {logdir}", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _render_saved(paths: list[str]) -> int:
    results: dict[tuple[str, str], dict] = {}
    for path in paths:
        with open(path) as f:
            for name, rec in json.load(f).items():
                system, case = name.split(" ", 1)
                results[(system, case)] = rec
    cases = [(PART_OF[c.split(":")[0]], s, c) for s, c in results]
    systems = [s for s in SYSTEMS if any(s == k[0] for k in results)]
    cases.sort(key=lambda x: (list(PART_OF.values()).index(x[0]), x[2].startswith("p2proc")))
    print(render(results, systems, list(dict.fromkeys(p for p, _, _ in cases)), cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
