"""Machine description, the results table, and the generated part of RESULTS.md."""

import datetime
import os
import platform
import re

from .workloads import METRIC_BY_ID

START = "<!-- results:start -->"
END = "<!-- results:end -->"
HEADER = """# nbcluster benchmark results

nbcluster against dask.distributed, same machine, same run, same cluster shape.
See `benchmarks/README.md` for what each workload measures and how to run it.
The part between the `results` markers below is rewritten by `python -m benchmarks`;
text outside the markers is kept.

"""


def _meminfo_total():
    try:
        import psutil

        return psutil.virtual_memory().total
    except Exception:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    """The 1-minute load average, to show whether something else was running."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "?"


def machine_info():
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = _meminfo_total()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def versions(child_versions, import_failed=()):
    """Versions reported by the children, falling back to installed metadata."""
    out = {"python": platform.python_version()}
    for name in ("nbcluster", "dask", "distributed", "numpy"):
        v = child_versions.get(name) or _dist_version(name) or "not installed"
        if name in import_failed or (name == "distributed" and "dask" in import_failed):
            v += " (import failed)"
        out[name] = v
    return out


# --------------------------------------------------------------------------- table
def _fmt_cell(cell, metric):
    if cell is None:
        return "—"
    if "value" in cell:
        return metric.fmt.format(cell["value"])
    if "skipped" in cell:
        return cell["skipped"]
    return "ERROR: " + _short(cell.get("error", "?"))


def _short(text, width=70):
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def ratio(metric, nb_cell, dask_cell):
    """dask/nbcluster for times and bytes, nbcluster/dask for rates: >1 = nbcluster better."""
    if not (nb_cell and dask_cell and "value" in nb_cell and "value" in dask_cell):
        return None
    nb, dk = nb_cell["value"], dask_cell["value"]
    if metric.higher_is_better:
        return nb / dk if dk > 0 else None
    return dk / nb if nb > 0 else None


def render_table(cells, systems, metric_ids):
    """A markdown table, padded so it also reads well in a terminal."""
    head = ["Workload", "Metric", "Unit"] + list(systems)
    both = "nbcluster" in systems and "dask" in systems
    if both:
        head.append("dask/nbcluster (>1: nbcluster better)")
    rows = []
    for mid in metric_ids:
        m = METRIC_BY_ID[mid]
        row = [m.workload, m.label, m.unit]
        row += [_fmt_cell(cells.get(s, {}).get(mid), m) for s in systems]
        if both:
            r = ratio(m, cells.get("nbcluster", {}).get(mid), cells.get("dask", {}).get(mid))
            row.append("—" if r is None else f"{r:.2f}x" + (" (rate, inverted)" if m.higher_is_better else ""))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    num = {i for i in range(3, len(head))}

    def line(r):
        return "| " + " | ".join(
            str(v).rjust(w) if i in num else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))
        ) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in num else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def error_list(cells, systems, metric_ids):
    seen, out = set(), []
    for s in systems:
        for mid in metric_ids:
            cell = cells.get(s, {}).get(mid)
            if cell and "error" in cell:
                text = " ".join(str(cell["error"]).split())
                if (s, text) not in seen:
                    seen.add((s, text))
                    out.append(f"- {s} {mid}: {text}")
    return out


def config_env():
    """Environment variables that change either system's configuration."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(("DASK_", "NBCLUSTER_"))}


def render_section(cells, systems, metric_ids, vers, machine, command, notes, elapsed_s):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"Generated {now} by `{command}` in {elapsed_s:.0f} s.",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpus_usable']} usable), {machine['cpu_model']}, "
        f"{machine['memory_gib']} GiB RAM, {machine['platform']}; "
        f"1-minute load average {machine.get('load', loadavg())} (well above 0 means other work shared the CPUs)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        "- Cluster: scheduler + 2 worker processes x 1 thread, 127.0.0.1; "
        "each system and workload runs in its own fresh subprocess",
        "- Configuration: " + (", ".join(f"`{k}={v}`" for k, v in config_env().items())
                               or "both systems at their defaults (no DASK_* / NBCLUSTER_* variables set)"),
        "",
        render_table(cells, systems, metric_ids),
        "",
        "Medians over the repeats. The last column is dask/nbcluster for times and bytes and "
        "nbcluster/dask for rates (tasks/s, MB/s), so above 1 always means nbcluster is better.",
    ]
    if notes:
        parts += [""] + [f"- {n}" for n in notes]
    errs = error_list(cells, systems, metric_ids)
    if errs:
        parts += ["", "Errors (full text; the children's logs are under the run's log folder):", ""] + errs
    return "\n".join(parts)


def write_results_md(path, section):
    block = f"{START}\n{section}\n{END}"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if START in text and END in text and text.index(START) < text.index(END):
            pattern = re.escape(START) + r".*?" + re.escape(END)
            text = re.sub(pattern, lambda _m: block, text, count=1, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = HEADER + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
