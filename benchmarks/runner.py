"""``python -m benchmarks``: run the workloads for each system and report.

For every selected workload, and for every selected system in turn, a fresh
``python -m benchmarks.child`` is started in its own process group with a
timeout; it writes its numbers as JSON.  Whatever it leaves behind in its
process group (workers, a CLI scheduler) is stopped afterwards.  The parent
never imports nbcluster or dask.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from . import report
from .systems import SYSTEMS, child_env
from .workloads import METRICS, WORKLOADS, metrics_of

# Seconds per (system, workload) child, before --timeout-scale.
TIMEOUTS = {"W1": 90, "W2": 120, "W3": 90, "W4": 360, "W5": 90, "W6": 180, "W7": 180, "W8": 300}
QUICK_TIMEOUTS = {"W4": 150, "W8": 240}
FULL_TIMEOUTS = {"W4": 1200}


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark nbcluster against dask.distributed (2 workers x 1 thread, 127.0.0.1).")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="fewer repeats, skip N=100,000 in W4 (about 3 minutes)")
    mode.add_argument("--full", action="store_true",
                      help="also run dask at N=100,000 in W4 (may take minutes)")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3 (default: all)")
    ap.add_argument("--systems", default="nbcluster,dask", help="comma-separated: nbcluster,dask")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                    help="markdown file whose generated section is rewritten")
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    ap.add_argument("--json", default=None, help="also write all numbers and samples to this file")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every child timeout")
    ap.add_argument("--logs", default=None, help="folder for the children's logs (default: a new temp folder)")
    a = ap.parse_args(argv)
    a.mode = "quick" if a.quick else "full" if a.full else "default"
    a.workloads = [w.strip().upper() for w in a.only.split(",") if w.strip()] or sorted(WORKLOADS)
    bad = [w for w in a.workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {sorted(WORKLOADS)}")
    a.workloads = sorted(set(a.workloads))
    a.system_list = [s.strip().lower() for s in a.systems.split(",") if s.strip()]
    bad = [s for s in a.system_list if s not in SYSTEMS]
    if bad or not a.system_list:
        ap.error(f"unknown system(s) {bad}; choose from {sorted(SYSTEMS)}")
    return a


def timeout_for(workload, mode, scale):
    t = TIMEOUTS[workload]
    if mode == "quick":
        t = QUICK_TIMEOUTS.get(workload, t)
    if mode == "full":
        t = FULL_TIMEOUTS.get(workload, t)
    return t * scale


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _group_cmdlines(pgid):
    try:
        import psutil
    except ImportError:
        return []
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(" ".join(proc.info["cmdline"] or [])[:120])
        except (OSError, psutil.Error):
            pass
    return out


def _stop_group(pgid, grace=3.0):
    """Stop what a finished child left in its process group.

    Returns the command lines of what was still running after ``grace``
    seconds (multiprocessing's resource tracker, for one, exits on its own
    shortly after its parent), or [] if the group emptied by itself.
    """
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _group_alive(pgid):
        return []
    left = _group_cmdlines(pgid)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return left
    deadline = time.monotonic() + 3
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left or ["?"]


def _last_lines(path, n=3):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return " / ".join(lines[-n:])
    except OSError:
        return ""


def run_child(system, workload, mode, timeout, logdir):
    env, root = child_env()
    out = os.path.join(logdir, f"{system}-{workload}.json")
    log = os.path.join(logdir, f"{system}-{workload}.log")
    cmd = [sys.executable, "-m", "benchmarks.child", "--system", system,
           "--workload", workload, "--mode", mode, "--out", out]
    timed_out = False
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, cwd=root, env=env, stdout=lf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
        leftovers = _stop_group(p.pid, grace=0.0 if timed_out else 3.0)
    data = {}
    if os.path.exists(out):
        try:
            with open(out) as f:
                data = json.load(f)
        except ValueError:
            data = {}
    errors = data.get("errors", {})
    cells = {}
    for m in metrics_of(workload):
        if m.id in data.get("metrics", {}):
            cells[m.id] = data["metrics"][m.id]
        elif m.id in errors:
            cells[m.id] = {"error": errors[m.id]}
        elif "*" in errors:
            cells[m.id] = {"error": errors["*"]}
        elif timed_out:
            cells[m.id] = {"error": f"timeout after {timeout:.0f} s (log: {log})"}
        else:
            cells[m.id] = {"error": f"child exited rc={rc} without this result: {_last_lines(log)}"}
    return {"cells": cells, "data": data, "rc": rc, "timed_out": timed_out,
            "leftovers": [] if timed_out else leftovers, "log": log}


def _progress(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.monotonic()
    load_start = report.loadavg()
    logdir = a.logs or tempfile.mkdtemp(prefix="nbcluster-bench-")
    os.makedirs(logdir, exist_ok=True)
    metric_ids = [m.id for m in METRICS if m.workload in a.workloads]
    cells = {s: {} for s in a.system_list}
    child_versions, runs, notes = {}, {}, []
    import_failed = {}
    total = len(a.workloads) * len(a.system_list)
    k = 0
    _progress(f"benchmarks: mode={a.mode}, workloads={','.join(a.workloads)}, "
              f"systems={','.join(a.system_list)}, logs in {logdir}")
    for w in a.workloads:
        for s in a.system_list:
            k += 1
            if s in import_failed:
                for m in metrics_of(w):
                    cells[s][m.id] = {"error": import_failed[s]}
                _progress(f"[{k:2d}/{total}] {w} {s}: skipped, import failed")
                continue
            t0 = time.monotonic()
            timeout = timeout_for(w, a.mode, a.timeout_scale)
            _progress(f"[{k:2d}/{total}] {w} {s} ...")
            r = run_child(s, w, a.mode, timeout, logdir)
            runs[f"{s}-{w}"] = r
            cells[s].update(r["cells"])
            child_versions.update(r["data"].get("versions", {}))
            if r["data"].get("import_error"):
                import_failed[s] = r["data"]["errors"].get("*", "import failed")
            if "teardown" in r["data"].get("errors", {}):
                notes.append(f"{s} {w}: error while closing the cluster: {r['data']['errors']['teardown']}")
            if r["leftovers"]:
                notes.append(f"{s} {w}: still running 3 s after the child exited (stopped by the runner): "
                             + "; ".join(r["leftovers"]))
            status = "timeout" if r["timed_out"] else f"rc={r['rc']}"
            shown = ", ".join(
                f"{mid}={c['value']:.4g}" if "value" in c else f"{mid}=" + ("skipped" if "skipped" in c else "ERROR")
                for mid, c in r["cells"].items())
            _progress(f"        {time.monotonic() - t0:5.1f} s {status}: {shown}")

    notes += _standard_notes(a, metric_ids)
    vers = report.versions(child_versions, import_failed)
    machine = report.machine_info()
    machine["load"] = f"{load_start} at the start, {report.loadavg()} at the end"
    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    elapsed = time.monotonic() - t_start
    section = report.render_section(cells, a.system_list, metric_ids, vers, machine, command, notes, elapsed)
    print(section)
    if not a.no_write:
        report.write_results_md(a.results, section)
        _progress(f"wrote {a.results}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"mode": a.mode, "machine": machine, "versions": vers, "cells": cells,
                       "runs": {k: v["data"] for k, v in runs.items()}}, f, indent=1, default=str)
        _progress(f"wrote {a.json}")
    _progress(f"children's logs: {logdir}  ({elapsed:.0f} s in all)")
    return 0


def _standard_notes(a, metric_ids):
    notes = []
    if a.mode == "quick":
        notes.append("--quick: fewer repeats (W2 3, W3 5, W4 3/1, W5 3, W6 3, W7 2+1); W4 N=100,000 not run.")
    if "W4.100000" in metric_ids and "dask" in a.system_list and a.mode == "default":
        notes.append("W4 N=100,000 is not run for dask by default (it takes minutes); use --full.")
    if "W6.transfer" in metric_ids:
        notes.append("W6: the array is made on worker A and kept there; transfer MB/s = 200 MB / "
                     "(time of the sum pinned to B - time of the same sum pinned to A); "
                     "end to end = 200 MB / time of the sum pinned to B.")
    if "W8.bytes" in metric_ids:
        notes.append("W8: the scheduler runs alone in a process started from the system's CLI, with "
                     "2 CLI workers; 100,000 `add(gate, i)` wait on a sleeping task; value = growth of "
                     "the scheduler process's RSS (psutil, with any children) / 100,000. dask is asked "
                     "for its task count before measuring; for nbcluster a later probe task is awaited "
                     "and the RSS is read once it is steady.")
    return notes
