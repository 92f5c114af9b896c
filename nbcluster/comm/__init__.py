"""Transports behind one small interface: ``connect``, ``listen`` and ``Comm``."""

from .addressing import advertised
from .core import Comm, Listener, connect, listen, parse_address

__all__ = ["Comm", "Listener", "advertised", "connect", "listen", "parse_address"]
