"""The clusters the JupyterLab sidebar shows, and what it may do with them.

Listed (:func:`list_clusters`): every running dashboard in nbcluster's registry (clusters of
notebooks, of ``nbcluster scheduler``, of this server), every remote dashboard a running kernel
registered, and schedulers from connection files that listen here; each with its figures
(workers, threads, memory, tasks) from the dashboard's ``/metrics.json``.

Controlled, never by an address the request names: the request names a listed cluster by its
``id`` (``dashboard-<port>``, ``remote-<name>``, ``file-<n>``), resolved again here.

- **Started by this Jupyter server** (the sidebar's "New cluster", :class:`ServerClusters`): a
  LocalCluster of processes owned by this process: scale and stop call its own methods.
- **A scheduler process of this user** (a notebook's LocalCluster of processes, or
  ``nbcluster scheduler``): stop only, by SIGTERM to the process the registry names, after
  checking that it is alive, listens on the registered port and is an nbcluster scheduler
  (its command line). Its workers exit with it; the notebook's cluster object then says the
  scheduler is gone. Scaling needs the object that owns the workers: the notebook.
- **Inside a kernel** (``processes=False``: the registered process is the kernel) or **on
  another machine**: neither; the reply says to do it from the notebook. Signalling a kernel
  would kill the user's session, and a remote scheduler is not ours to reach.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from tornado import httpclient

from ..config import connection_file_for, read_connection_file, runtime_dir
from ..dashboard.links import describe, live_dashboard, live_dashboards, live_remotes

MAX_WORKERS = 256       # one click should not start more processes than this
_SCHEDULER_COMMANDS = (("nbcluster.deploy.spawn", "scheduler"), ("nbcluster", "scheduler"),
                       ("nbcluster.cli", "scheduler"))


class ControlError(Exception):
    """A refused control request: HTTP ``status`` and a one-line ``message`` saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def worker_count(value: Any, what: str = "workers") -> int:
    """``value`` as a number of workers (0 to MAX_WORKERS), else a 400 naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ControlError(400, f"{what} must be a whole number from 0 to {MAX_WORKERS}, "
                                f"got {value!r}")
    return value


class ServerClusters:
    """LocalClusters this Jupyter server started, by scheduler address. Their processes exit
    when this process does (they watch its pipe); :meth:`close_all` stops them in order."""

    def __init__(self) -> None:
        self.clusters: dict[str, Any] = {}
        self._files: dict[str, Any] = {}

    async def start(self, workers: int | None, threads: int) -> Any:
        from ..deploy.local import LocalCluster

        def make() -> Any:
            from ..config import write_connection_file

            # processes, always: user code never runs inside the Jupyter server
            cluster: Any = LocalCluster(n_workers=workers, threads_per_worker=threads,
                                        processes=True)
            try:   # so that `%cluster connect ADDRESS` in a notebook finds the token
                self._files[cluster.scheduler_address] = write_connection_file(
                    cluster.scheduler_address, cluster.token)
            except Exception:  # noqa: BLE001 - a read-only home: `--token` is then needed
                pass
            return cluster

        cluster = await asyncio.to_thread(make)
        self.clusters[cluster.scheduler_address] = cluster
        return cluster

    async def scale(self, address: str, n: int) -> None:
        await asyncio.to_thread(self.clusters[address].scale, n)

    async def stop(self, address: str) -> None:
        cluster = self.clusters.pop(address)
        await asyncio.to_thread(self._close, cluster)

    def _close(self, cluster: Any) -> None:
        from ..config import remove_connection_file

        try:
            cluster.close()
        finally:
            path = self._files.pop(cluster.scheduler_address, None)
            if path is not None:
                remove_connection_file(path, cluster.scheduler_address, cluster.token)

    def prune(self) -> None:
        """Let go of clusters whose scheduler died on its own (closing ends their workers)."""
        for address, cluster in list(self.clusters.items()):
            if cluster.status != "running" and self.clusters.pop(address, None) is not None:
                self._close(cluster)

    def close_all(self) -> None:
        while self.clusters:
            _, cluster = self.clusters.popitem()
            try:
                self._close(cluster)
            except Exception:  # noqa: BLE001 - at exit: the others still close
                pass


async def list_clusters(base_url: str, owned: ServerClusters | None = None) -> list[dict]:
    """Clusters on this machine (see the module's docstring), each with an ``id``, its
    figures, its proxied dashboard (``dashboard``: the status page; ``dashboard_base``: where
    its other pages are) and what the sidebar may do (``can_scale``, ``can_stop``, ``note``)."""
    from jupyter_server.utils import url_path_join

    owned = owned or ServerClusters()
    await asyncio.to_thread(owned.prune)
    dashboards = await asyncio.to_thread(live_dashboards)
    remotes = await asyncio.to_thread(live_remotes)
    figures = await asyncio.gather(*(_figures(e) for e in [*dashboards, *remotes]))
    out = []
    for entry, fig in zip(dashboards, figures):
        info = describe(entry)
        base = url_path_join(base_url, f"nbcluster/dashboard/{info['port']}",
                             info.get("prefix") or "").rstrip("/") + "/"
        out.append({"id": f"dashboard-{info['port']}", "scheduler": info.get("scheduler"),
                    "pid": info.get("pid"), "dashboard_port": info["port"],
                    "started": info.get("started"), "dashboard": base + "status",
                    "dashboard_base": base, **fig})
    for entry, fig in zip(remotes, figures[len(dashboards):]):
        base = url_path_join(base_url, f"nbcluster/remote/{entry['name']}",
                             entry.get("prefix") or "").rstrip("/") + "/"
        out.append({"id": f"remote-{entry['name']}", "scheduler": entry.get("scheduler"),
                    "pid": entry.get("pid"), "remote": entry["origin"],
                    "started": entry.get("started"), "dashboard": base + "status",
                    "dashboard_base": base, **fig})
    known = {c["scheduler"] for c in out}
    for address, path in await asyncio.to_thread(_connection_files):
        if address not in known:
            out.append({"id": "file-" + os.path.basename(path)[len("scheduler-"):-len(".json")],
                        "scheduler": address, "workers": None, "dashboard": None,
                        "dashboard_base": None, "connection_file": path})
    for cluster in out:
        cluster.update(await asyncio.to_thread(_controls, cluster, owned))
        cluster["connect"] = await asyncio.to_thread(_connect_line, cluster, owned)
    return out


def _connect_line(cluster: dict, owned: ServerClusters) -> str | None:
    """``%cluster connect ADDRESS`` when a notebook of this user can connect with it alone
    (the token is in the scheduler's connection file), else None."""
    address = cluster.get("scheduler")
    if not address or not (address in owned.clusters or cluster.get("connection_file")
                           or connection_file_for(address).exists()):
        return None
    return f"%load_ext nbcluster\n%cluster connect {address}"


def _controls(cluster: dict, owned: ServerClusters) -> dict:
    if cluster.get("scheduler") in owned.clusters:
        return {"owner": "server", "can_scale": True, "can_stop": True,
                "note": "started by this Jupyter server"}
    if cluster.get("remote"):
        return {"owner": "remote", "can_scale": False, "can_stop": False,
                "note": "on another machine: scale or stop it from its notebook"}
    if cluster["id"].startswith("file-"):
        return {"owner": "terminal", "can_scale": False, "can_stop": False,
                "note": "a scheduler without a dashboard: stop it where it was started"}
    if _scheduler_process(cluster.get("pid")):
        return {"owner": "scheduler", "can_scale": False, "can_stop": True,
                "note": "scale it from its notebook (cluster.scale(n)); stop ends its "
                        "scheduler process, and its workers with it"}
    return {"owner": "kernel", "can_scale": False, "can_stop": False,
            "note": "runs inside a notebook's kernel: scale or stop it there "
                    "(%cluster scale N, %cluster stop)"}


def _scheduler_process(pid: Any) -> bool:
    """Whether ``pid`` is an nbcluster scheduler process (by its command line), never this
    Jupyter server or a kernel."""
    import psutil

    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    words = [os.path.basename(w) for w in cmdline]
    return any(any(words[i:i + 2] == list(pair) for i in range(len(words)))
               for pair in _SCHEDULER_COMMANDS)


async def control(base_url: str, owned: ServerClusters, cluster_id: str, action: str,
                  body: dict) -> dict:
    """Carry out ``action`` ("scale" or "stop") on the listed cluster ``cluster_id``; the
    reply, or a :class:`ControlError` saying why not."""
    if action not in ("scale", "stop"):
        raise ControlError(404, f"unknown action {action!r}: use scale or stop")
    clusters = {c["id"]: c for c in await list_clusters(base_url, owned)}
    cluster = clusters.get(cluster_id)
    if cluster is None:
        raise ControlError(404, f"no cluster {cluster_id!r} here (it may have stopped); "
                                "GET nbcluster/clusters lists them")
    if action == "scale":
        n = worker_count(body.get("workers"))
        if not cluster["can_scale"]:
            raise ControlError(409, f"cannot scale {cluster['scheduler']} from here: "
                                    f"{cluster['note']}")
        await owned.scale(cluster["scheduler"], n)
        return {"id": cluster_id, "workers": n}
    if not cluster["can_stop"]:
        raise ControlError(409, f"cannot stop {cluster['scheduler']} from here: "
                                f"{cluster['note']}")
    if cluster["owner"] == "server":
        await owned.stop(cluster["scheduler"])
    else:
        await asyncio.to_thread(_terminate, cluster)
    return {"id": cluster_id, "stopped": True}


def _terminate(cluster: dict) -> None:
    """SIGTERM to the scheduler process the registry names, checked once more just before."""
    entry = live_dashboard(cluster["dashboard_port"])
    if entry is None or entry.get("pid") != cluster["pid"] or \
            not _scheduler_process(cluster["pid"]):
        raise ControlError(409, "the cluster's scheduler changed or stopped meanwhile")
    try:
        os.kill(cluster["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass


async def _figures(entry: dict) -> dict:
    """Workers, threads, memory and tasks from the dashboard's ``/metrics.json`` (a snapshot;
    cheap); ``workers`` None when it does not answer (busy or closing)."""
    headers = {"Authorization": f"token {entry['token']}"} if entry.get("token") else {}
    origin = entry.get("origin") or f"http://127.0.0.1:{entry['port']}"   # remote, or here
    url = f"{origin}{entry.get('prefix') or ''}/metrics.json"
    try:
        resp = await httpclient.AsyncHTTPClient().fetch(url, headers=headers, request_timeout=3)
        fig = json.loads(resp.body)
        return {"workers": int(fig["workers"]), "threads": fig.get("threads"),
                "memory": fig.get("memory"), "tasks": fig.get("tasks"),
                "tasks_per_second": fig.get("tasks_per_second")}
    except Exception:  # noqa: BLE001 - a busy or closing cluster is listed without figures
        return {"workers": None}


def _connection_files() -> list[tuple[str, str]]:
    """(address, path) of connection files whose scheduler port is listened on here."""
    import psutil

    try:
        listening = {c.laddr.port for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr}
    except psutil.Error:
        listening = set()
    found = []
    for path in sorted(runtime_dir().glob("scheduler-*.json")):
        try:
            address = read_connection_file(path)[0]
            port = int(address.rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if port in listening:
            found.append((address, str(path)))
    return found


__all__ = ["ControlError", "ServerClusters", "control", "list_clusters"]
