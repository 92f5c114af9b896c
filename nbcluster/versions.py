"""The versions that must agree across a cluster: Python (major.minor: pickled code and
bytecode differ between them), cloudpickle (its format changes between releases) and
nbcluster (its messages). Each process reports its own (workers in their HELLO, the scheduler
in its answer to a client's); the client warns about each mismatch at connect, and the
scheduler logs a worker that joins with one."""

from __future__ import annotations

import sys
from typing import Any

_MINE: dict[str, str] = {}


def versions() -> dict[str, str]:
    """This process's versions that matter."""
    if not _MINE:
        import cloudpickle

        from . import __version__

        _MINE.update(python="%d.%d" % sys.version_info[:2],
                     cloudpickle=str(getattr(cloudpickle, "__version__", "?")),
                     nbcluster=__version__)
    return dict(_MINE)


def mismatches(mine: dict[str, str], theirs: Any) -> dict[str, tuple[str, str]]:
    """``{package: (mine, theirs)}`` where they differ (a peer that says nothing: none)."""
    if not isinstance(theirs, dict):
        return {}
    return {name: (mine[name], str(theirs[name])) for name in sorted(mine)
            if name in theirs and str(theirs[name]) != mine[name]}


def describe(found: dict[str, tuple[str, str]], me: str, them: str) -> str:
    """``python 3.11 here, 3.12 on worker tcp://...; ...``."""
    return "; ".join(f"{name} {a} {me}, {b} {them}" for name, (a, b) in found.items())
