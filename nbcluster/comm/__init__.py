"""Transports behind one small interface: ``connect``, ``listen`` and ``Comm``."""

from .core import Comm, Listener, connect, listen, parse_address

__all__ = ["Comm", "Listener", "connect", "listen", "parse_address"]
