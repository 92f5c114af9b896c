"""The cluster's figures as JSON and as Prometheus text, both built from one snapshot.

``/metrics.json`` is :func:`figures`; ``/metrics`` is :func:`prometheus_text` of the same dict,
so the two never disagree. No Bokeh here.
"""

from __future__ import annotations

from typing import Any

from ..state.snapshot import TASK_STATES

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def figures(snap: dict, tasks_per_second: float) -> dict:
    """Tasks by state, workers, memory, tasks per second: plain data for JSON."""
    totals = snap["totals"]
    tasks = dict.fromkeys(TASK_STATES, 0)
    tasks.update(snap.get("tasks", {}))
    return {
        "tasks": tasks,
        "tasks_known": totals["tasks"],
        "tasks_completed": totals["tasks_completed"],
        "tasks_failed": totals["tasks_failed"],
        "tasks_per_second": round(float(tasks_per_second), 3),
        "workers": totals["workers"],
        "threads": totals["threads"],
        "clients": totals["clients"],
        "memory": {"results": totals["nbytes"], "process": totals["rss"],
                   "limit": totals["memory_limit"]},
        "per_worker": [
            {"address": w["address"], "name": w["name"], "threads": w["nthreads"],
             "processing": w["processing"], "results": w["nbytes"], "process": w["rss"],
             "limit": w["memory_limit"], "cpu": w["cpu"], "last_seen": w["last_seen"]}
            for w in snap.get("workers", [])
        ],
    }


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def prometheus_text(fig: dict) -> str:
    """Prometheus text exposition format (version 0.0.4) of :func:`figures`."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, Any]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(**labels)} {value}")

    metric("nbcluster_tasks", "gauge", "Tasks the scheduler knows, by state.",
           [({"state": s}, n) for s, n in sorted(fig["tasks"].items())])
    metric("nbcluster_tasks_completed_total", "counter", "Tasks finished since the start.",
           [({}, fig["tasks_completed"])])
    metric("nbcluster_tasks_failed_total", "counter", "Tasks that raised since the start.",
           [({}, fig["tasks_failed"])])
    metric("nbcluster_tasks_per_second", "gauge", "Tasks ended per second, recently.",
           [({}, fig["tasks_per_second"])])
    metric("nbcluster_workers", "gauge", "Workers connected.", [({}, fig["workers"])])
    metric("nbcluster_threads", "gauge", "Worker threads in total.", [({}, fig["threads"])])
    metric("nbcluster_clients", "gauge", "Clients connected.", [({}, fig["clients"])])
    metric("nbcluster_memory_bytes", "gauge",
           "Memory of all workers: results held, process RSS, limit.",
           [({"kind": k}, v) for k, v in sorted(fig["memory"].items())])
    samples = []
    for w in fig["per_worker"]:
        for kind in ("results", "process", "limit"):
            samples.append(({"worker": w["address"], "kind": kind}, w[kind]))
    metric("nbcluster_worker_memory_bytes", "gauge", "Memory per worker, by kind.", samples)
    metric("nbcluster_worker_processing", "gauge", "Tasks assigned to each worker.",
           [({"worker": w["address"]}, w["processing"]) for w in fig["per_worker"]])
    metric("nbcluster_worker_cpu_percent", "gauge", "CPU use of each worker process.",
           [({"worker": w["address"]}, w["cpu"]) for w in fig["per_worker"]])
    return "\n".join(out) + "\n"
