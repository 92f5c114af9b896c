"""Which ``Host`` (and websocket ``Origin``) a dashboard answers: the guard against DNS rebinding.

A dashboard on a loopback address has no token by default, and a browser keeps pages of other
sites from reading it, unless a page *rebinds* its own name (``evil.example``) to 127.0.0.1:
``http://evil.example:8787/`` is then its own origin. Its requests still name
``evil.example`` in ``Host``, so, as Jupyter's server does (``check_host``), such a dashboard
answers only requests whose ``Host`` names a loopback address or ``localhost`` (on any port:
a tunnel changes it) or a name listed in ``NBCLUSTER_DASHBOARD_ALLOWED_HOSTS``
(comma-separated; ``*`` turns the check off). A websocket's ``Origin`` must name one of those
too, or equal the ``Host`` (a proxy that passes both on): otherwise a page of another site could
load Bokeh's ``autoload.js`` and open one.

Not checked: a dashboard deliberately listening on another interface (it asks for its token,
whose cookie is ``SameSite=Strict``), as before. Behind JupyterHub or Binder
(``JUPYTERHUB_SERVICE_PREFIX`` set) any ``Host`` is answered, as JupyterHub's single-user server
does (it sets ``allow_remote_access``): the browser is on another machine, and
jupyter-server-proxy passes the hub's own name on as the ``Host``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

ENV_VAR = "NBCLUSTER_DASHBOARD_ALLOWED_HOSTS"
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a ``Host`` header or a URL's authority: lower case, without port or
    brackets (``[::1]:8787`` -> ``::1``). Anything malformed comes back as it is, and so
    matches no name."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name if rest == "" or (rest[0] == ":" and rest[1:].isdigit()) else value
    name, colon, port = value.rpartition(":")
    return name if colon and (port == "" or (port.isascii() and port.isdigit())) else value


class HostCheck:
    """The names a dashboard on a loopback address answers to (see the module's docstring):
    loopback addresses, ``localhost`` and ``names`` (without port), or any with ``any_host``;
    websockets only from pages of those, or of the ``Host`` itself."""

    def __init__(self, names: Iterable[str] = (), any_host: bool = False) -> None:
        self.names = frozenset(n.strip().lower() for n in names)
        self.any_host = any_host

    def name_ok(self, name: str) -> bool:
        return is_loopback(name) or name in self.names

    def host_ok(self, host: str | None) -> bool:
        """Whether to answer a request with this ``Host`` header (None: no header, which
        browsers always send)."""
        return host is None or self.any_host or self.name_ok(host_name(host))

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """Whether a websocket from a page of ``origin`` may open (None: not from a page)."""
        if origin is None:
            return True
        try:
            netloc = urlsplit(origin.strip().lower()).netloc    # "null" has none
        except ValueError:
            return False
        return bool(netloc) and (netloc == (host or "").strip().lower()
                                 or self.name_ok(host_name(netloc)))


def host_check(listen_host: str, allowed: Iterable[str] | str | None = None,
               environ: Mapping[str, str] | None = None) -> HostCheck | None:
    """The check for a dashboard listening on ``listen_host``, or None when there is none.

    ``allowed``: more names to answer to (default: ``NBCLUSTER_DASHBOARD_ALLOWED_HOSTS``);
    ``*`` among them turns the check off. An entry that is not a host name or an IP address is
    left out with a warning (a misspelt setting must not stop a cluster from starting).
    """
    env = os.environ if environ is None else environ
    source = "allowed_hosts"
    if allowed is None:
        allowed, source = env.get(ENV_VAR, ""), ENV_VAR
    if isinstance(allowed, str):
        allowed = allowed.split(",")
    entries = [str(a).strip() for a in allowed if str(a).strip()]
    if "*" in entries or not is_loopback(listen_host):
        return None
    names = []
    for entry in entries:
        name = host_name(entry)
        if _NAME.fullmatch(name) or is_ip(name):
            names.append(name)
        else:
            warnings.warn(f"{source}: {entry!r} is not a host name or an IP address, so the "
                          "dashboard does not answer to it; list names only, as in "
                          f"{ENV_VAR}=dash.example,10.0.0.5", UserWarning, stacklevel=3)
    return HostCheck(names, any_host=bool(env.get("JUPYTERHUB_SERVICE_PREFIX")))


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def refusal(host: str | None, origin: str | None = None) -> str:
    """The 403's text: what was refused, why, and how to allow it."""
    def shown(value: str | None) -> str:
        value = value or ""
        return repr(value if len(value) <= 80 else value[:80] + "...")
    if origin is None:
        what = f"answers only requests addressed to localhost or a loopback address, not to " \
               f"{shown(host)}"
    else:
        what = f"opens websockets only for pages of localhost or a loopback address (or of " \
               f"the address in Host), not for a page of {shown(origin)}"
    return (f"Forbidden: this dashboard is on a loopback address and {what} (a guard against "
            f"DNS rebinding). To allow another name, list it in {ENV_VAR} (comma-separated) "
            "where the cluster starts.\n")
