"""What a server tells others to connect to (its contact address), as opposed to what it binds.

A server bound to a wildcard (``0.0.0.0``, ``::``) listens on every interface, but its listener
reports the wildcard, which nobody can connect to. It advertises instead the address of the
interface whose route reaches its peer (a worker: its scheduler; a scheduler: the default
route), found without sending a packet. ``--contact-address`` overrides that (a host behind
NAT or a port forward); ``--interface NAME`` binds and advertises that interface's IPv4
address.
"""

from __future__ import annotations

import socket

from ..errors import ConnectError

WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# any public address: a UDP socket "connected" to it names the default route's interface
DEFAULT_ROUTE_PROBE = "192.0.2.1"   # TEST-NET-1: never routed to anyone, no packet is sent


def split(address: str) -> tuple[str, str, int]:
    """``tcp://HOST:PORT`` (IPv6 in brackets or not) -> (scheme, host, port)."""
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not port.isdigit() or int(port) > 65535:
        raise ConnectError(f"bad address {address!r} (expected tcp://HOST:PORT, PORT 0 to 65535)")
    return scheme, host.strip("[]"), int(port)


def join(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def choose_contact(bound: str, contact: str | None, routed_ip: str | None) -> str:
    """The address to advertise (pure). ``bound``: what the listener reports (the real port);
    ``contact``: the user's ``--contact-address`` (its port 0: the bound one); ``routed_ip``:
    this machine's address on the route to the peer, used when ``bound`` is a wildcard."""
    if "://" not in bound or bound.startswith("inproc://"):
        return bound
    scheme, host, port = split(bound)
    if contact:
        c_scheme, c_host, c_port = split(contact)
        if c_scheme != scheme:
            raise ConnectError(f"contact address {contact!r}: the server speaks {scheme}://")
        if c_host in WILDCARDS:
            raise ConnectError(f"contact address {contact!r} is a wildcard nobody can connect "
                               "to: give this machine's name or address as others reach it")
        return join(scheme, c_host, c_port or port)
    if host in WILDCARDS and routed_ip:
        return join(scheme, routed_ip, port)
    return bound


def route_ip(peer_host: str | None = None) -> str | None:
    """This machine's address on the route to ``peer_host`` (None: the default route), or None
    if there is none. A UDP socket's connect only picks the route: nothing is sent."""
    target = peer_host or DEFAULT_ROUTE_PROBE
    try:
        infos = socket.getaddrinfo(target, 9, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                return str(s.getsockname()[0])
        except OSError:
            continue
    return None


def advertised(bound: str, contact: str | None = None, peer: str | None = None) -> str:
    """:func:`choose_contact` with the route found to ``peer`` (an address such as the
    scheduler's) only when it is needed."""
    routed = None
    if not contact and "://" in bound and not bound.startswith("inproc://"):
        if split(bound)[1] in WILDCARDS:
            peer_host = split(peer)[1] if peer and "://" in peer and \
                not peer.startswith("inproc://") else None
            routed = route_ip(None if peer_host in WILDCARDS else peer_host)
    return choose_contact(bound, contact, routed)


def interface_ip(name: str, addrs: dict | None = None) -> str:
    """The IPv4 address of network interface ``name`` (``addrs``: ``psutil.net_if_addrs()``,
    for tests); a ValueError naming the interfaces there are when it is unknown or has none."""
    if addrs is None:
        import psutil

        addrs = psutil.net_if_addrs()
    if name not in addrs:
        raise ValueError(f"--interface {name!r}: no such network interface here; there are "
                         f"{', '.join(sorted(addrs)) or 'none'}")
    for a in addrs[name]:
        if a.family == socket.AF_INET:
            return str(a.address)
    with_ipv4 = sorted(n for n, xs in addrs.items() if any(a.family == socket.AF_INET for a in xs))
    raise ValueError(f"--interface {name!r} has no IPv4 address; interfaces that have one: "
                     f"{', '.join(with_ipv4) or 'none'}")
