"""Where a dashboard can be reached: the link shown to users, and the registry of live ones.

**The link.** ``NBCLUSTER_DASHBOARD_LINK`` is a format string with ``{host}``, ``{port}``,
``{prefix}`` (the dashboard's own URL prefix, usually empty) and any environment variable, as
``{JUPYTERHUB_SERVICE_PREFIX}``. When it is unset and ``JUPYTERHUB_SERVICE_PREFIX`` is set (the
kernels of JupyterHub and Binder have it), the browser can reach only the Jupyter server, so the
link goes through nbcluster's Jupyter server extension, :data:`HUB_TEMPLATE`, when Jupyter's
configuration enables it, else through jupyter-server-proxy, :data:`PROXY_TEMPLATE` (an editable
install does not enable the extension; most hubs have the proxy). Otherwise it is the
plain ``http://{host}:{port}{prefix}/status``. A template that cannot be filled in falls back to
the plain link with a :class:`DashboardLinkWarning` naming the culprit; it never stops a cluster
from starting. ``?token=...`` is appended when the dashboard has a token.

The link is made by the process that serves the dashboard (for a LocalCluster of processes, its
scheduler process, which inherits the kernel's environment): that process knows its own host and
port, and a Client that connects to it by address gets the same link.

**The registry.** A running dashboard has a file ``dashboard-<port>.json`` in nbcluster's runtime
directory (see :mod:`nbcluster.config`; the directory is private to the user, the file is
mode 0600) with its port, pid, prefix, token and scheduler address; it is removed when the
dashboard stops. The Jupyter server extension proxies only to ports listed there whose process
is alive and still listens on that port on 127.0.0.1 (:func:`live_dashboard`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import runtime_dir

PLAIN_TEMPLATE = "http://{host}:{port}{prefix}/status"
HUB_TEMPLATE = "{JUPYTERHUB_SERVICE_PREFIX}nbcluster/dashboard/{port}{prefix}/status"
PROXY_TEMPLATE = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}{prefix}/status"
EXTENSION = "nbcluster.jupyter.server_extension"
ENV_VAR = "NBCLUSTER_DASHBOARD_LINK"
# addresses a connection to 127.0.0.1 can reach
_REACHABLE_FROM_LOOPBACK = {"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1"}


class DashboardLinkWarning(UserWarning):
    """``NBCLUSTER_DASHBOARD_LINK`` could not be used; the plain link is shown instead."""


def display_host(host: str) -> str:
    """The host as it appears in a URL: a wildcard as this machine's name, IPv6 in brackets."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host


def link_template(environ: Mapping[str, str] | None = None) -> str:
    """The template in effect: ``NBCLUSTER_DASHBOARD_LINK``, else the JupyterHub / Binder one
    when ``JUPYTERHUB_SERVICE_PREFIX`` is set, else the plain one."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return env[ENV_VAR]
    if env.get("JUPYTERHUB_SERVICE_PREFIX"):
        return HUB_TEMPLATE if extension_enabled() else PROXY_TEMPLATE
    return PLAIN_TEMPLATE


def extension_enabled() -> bool:
    """Whether Jupyter's configuration, as this process finds it, enables nbcluster's server
    extension (``jupyter_server_config.json`` or a file in ``jupyter_server_config.d``)."""
    try:
        from jupyter_core.paths import jupyter_config_path
    except ImportError:
        return False
    for directory in jupyter_config_path():
        folder = Path(directory)
        for path in [folder / "jupyter_server_config.json",
                     *sorted((folder / "jupyter_server_config.d").glob("*.json"))]:
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            enabled = (config.get("ServerApp") or {}).get("jpserver_extensions") or {}
            if isinstance(enabled, dict) and enabled.get(EXTENSION):
                return True
    return False


def format_link(host: str, port: int, prefix: str = "", token: str | None = None,
                environ: Mapping[str, str] | None = None) -> str:
    """The dashboard's status page as users should open it (see the module's docstring)."""
    env = os.environ if environ is None else environ
    template = link_template(env)
    fields = {"host": display_host(host), "port": port, "prefix": prefix}
    plain = PLAIN_TEMPLATE.format(**fields)
    try:
        link = template.format_map({**env, **fields})
    except KeyError as e:
        _fallback(template, f"{{{e.args[0]}}} is neither host, port, prefix nor a set "
                            "environment variable", plain)
        link = plain
    except (ValueError, IndexError, AttributeError) as e:
        _fallback(template, f"it is not a valid format string ({e})", plain)
        link = plain
    if token:
        link += ("&" if "?" in link else "?") + "token=" + quote(token, safe="")
    return link


def _fallback(template: str, why: str, plain: str) -> None:
    warnings.warn(f"{ENV_VAR}={template!r} cannot be used: {why}. Showing the plain link "
                  f"{plain} instead; fix or unset {ENV_VAR}.", DashboardLinkWarning, stacklevel=4)


# --------------------------------------------------------------------------- the registry
def registry_path(port: int) -> Path:
    return runtime_dir() / f"dashboard-{int(port)}.json"


def register(port: int, host: str, prefix: str, token: str | None,
             scheduler: str | None) -> Path | None:
    """Record a dashboard this process serves (best effort: a read-only home only loses the
    Jupyter proxy, never the dashboard)."""
    path = registry_path(port)
    entry = {"port": int(port), "pid": os.getpid(), "host": host, "prefix": prefix,
             "token": token, "scheduler": scheduler, "started": time.time()}
    if not _write_private(path, entry):
        return None
    _prune()
    return path


def _prune() -> None:
    """Remove the entries of processes that are gone (killed without stopping their dashboard)."""
    import psutil

    for other in runtime_dir().glob("dashboard-*.json"):
        entry = _read(other)
        pid = entry.get("pid") if entry else None
        if isinstance(pid, int) and not psutil.pid_exists(pid):
            try:
                other.unlink()
            except OSError:
                pass


def unregister(port: int) -> None:
    """Remove this process's entry for ``port`` (an entry another process wrote is kept)."""
    path = registry_path(port)
    _remove_if_mine(path, _read(path))


def _write_private(path: Path, entry: dict) -> bool:
    """Write ``entry`` as JSON only this user can read; whether it was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)      # readers never see half a file
    except OSError:
        return False
    return True


def _remove_if_mine(path: Path, entry: dict | None) -> None:
    if entry is not None and entry.get("pid") == os.getpid():
        try:
            path.unlink()
        except OSError:
            pass


def _load(path: Path) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read(path: Path) -> dict | None:
    entry = _load(path)
    return entry if isinstance(entry, dict) and isinstance(entry.get("port"), int) else None


def _listens_on_loopback(pid: int, port: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        conns = (proc.net_connections if hasattr(proc, "net_connections")
                 else proc.connections)(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               and c.laddr.ip in _REACHABLE_FROM_LOOPBACK for c in conns)


def live_dashboard(port: int) -> dict | None:
    """The registry entry for ``port`` if that dashboard is running on this machine (its
    process is alive and listens on the port, reachable at 127.0.0.1), else None."""
    entry = _read(registry_path(port))
    if entry is None or entry["port"] != int(port) or not isinstance(entry.get("pid"), int):
        return None
    return entry if _listens_on_loopback(entry["pid"], entry["port"]) else None


def live_dashboards() -> list[dict]:
    """Every running dashboard in the registry, oldest first."""
    found = []
    for path in sorted(runtime_dir().glob("dashboard-*.json")):
        entry = _read(path)
        if entry is not None and (live := live_dashboard(entry["port"])) is not None:
            found.append(live)
    return sorted(found, key=lambda e: e.get("started") or 0)


def describe(entry: Mapping[str, Any]) -> dict:
    """An entry without its token (what may be shown)."""
    return {k: v for k, v in entry.items() if k != "token"}


# --------------------------------------------------------------------------- remote dashboards
# A dashboard on another machine (SSHCluster's scheduler, a batch job's, a pod's, one a Client
# connected to by address) is registered by the kernel that started or connected to its
# cluster, as ``remote-<name>.json`` in the same private directory, and removed when that
# cluster or client closes (or the kernel is gone). The Jupyter server extension proxies
# ``nbcluster/remote/<name>/...`` to the URL of such an entry only: never to a host or port
# that a request names.
_NAME_SAFE = str.maketrans({c: "-" for c in ":/[]%?#@ "})


def remote_origin(link: str | None) -> tuple[str, str, str | None] | None:
    """(``http(s)://host:port``, prefix, token) of a dashboard link that names another
    machine; None for a link to this machine (registered by its own process), a relative one
    (already through a proxy), or anything else."""
    from urllib.parse import parse_qs, urlsplit

    if not link:
        return None
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        return None
    host = parts.hostname
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::") or host.startswith("127.") \
            or host == socket.gethostname():
        return None
    prefix = parts.path[: -len("/status")] if parts.path.endswith("/status") else ""
    tokens = parse_qs(parts.query).get("token")
    token = tokens[0] if tokens else None
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{parts.port}", prefix.rstrip("/"), token


def remote_path(name: str) -> Path:
    return runtime_dir() / f"remote-{name}.json"


def register_remote(link: str | None, scheduler: str | None) -> str | None:
    """Register the dashboard at ``link`` if it is on another machine; its name (for
    :func:`unregister_remote` and the proxy's URL), or None (not remote, or not writable)."""
    found = remote_origin(link)
    return None if found is None else register_origin(*found, scheduler)


def register_origin(origin: str, prefix: str, token: str | None,
                    scheduler: str | None) -> str | None:
    """Register the dashboard served at ``origin`` (``http(s)://host:port``) + ``prefix``."""
    name = origin.split("://", 1)[1].translate(_NAME_SAFE).strip("-")
    entry = {"name": name, "origin": origin, "prefix": prefix, "token": token,
             "scheduler": scheduler, "pid": os.getpid(), "started": time.time()}
    path = remote_path(name)
    if not _write_private(path, entry):
        return None
    return name


def unregister_remote(name: str | None) -> None:
    """Remove this process's entry ``name`` (one another kernel wrote since is kept)."""
    if not name:
        return
    path = remote_path(name)
    _remove_if_mine(path, _read_remote(path))


def _read_remote(path: Path) -> dict | None:
    entry = _load(path)
    if not isinstance(entry, dict) or not isinstance(entry.get("origin"), str) or \
            not entry["origin"].startswith(("http://", "https://")):
        return None
    return entry


def live_remote(name: str) -> dict | None:
    """The entry ``name`` if the kernel that registered it is still running, else None."""
    import psutil

    if not name or name != name.translate(_NAME_SAFE) or name.startswith("."):
        return None
    entry = _read_remote(remote_path(name))
    pid = entry.get("pid") if entry else None
    if entry is None or entry.get("name") != name or not isinstance(pid, int) or \
            not psutil.pid_exists(pid):
        return None
    return entry


def live_remotes() -> list[dict]:
    """Every remote dashboard registered by a running kernel, oldest first."""
    found = [e for path in sorted(runtime_dir().glob("remote-*.json"))
             if (e := live_remote(path.name[len("remote-"):-len(".json")])) is not None]
    return sorted(found, key=lambda e: e.get("started") or 0)


def remote_link(name: str, prefix: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The link to a registered remote dashboard through the Jupyter server extension."""
    env = os.environ if environ is None else environ
    return f"{env.get('JUPYTERHUB_SERVICE_PREFIX') or '/'}nbcluster/remote/{name}{prefix}/status"


def through_jupyter(link: str | None, name: str | None,
                    environ: Mapping[str, str] | None = None) -> str | None:
    """``link``, or on JupyterHub / Binder (with the extension enabled, and no
    ``NBCLUSTER_DASHBOARD_LINK``) the proxied link of the remote dashboard registered as
    ``name``: the browser there reaches only the Jupyter server."""
    env = os.environ if environ is None else environ
    if not name or not env.get("JUPYTERHUB_SERVICE_PREFIX") or env.get(ENV_VAR) \
            or not extension_enabled():
        return link
    found = remote_origin(link)
    return remote_link(name, found[1] if found else "", env)
