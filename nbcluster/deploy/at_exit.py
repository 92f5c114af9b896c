"""Clusters whose processes live elsewhere (SSH hosts, Kubernetes Pods) are closed when the
interpreter exits, so that a notebook that ends without ``close()`` leaves nothing running."""

from __future__ import annotations

import atexit
import weakref
from typing import Any

OPEN: "weakref.WeakSet[Any]" = weakref.WeakSet()   # add on start, discard on close


@atexit.register
def _close_at_exit() -> None:
    for cluster in list(OPEN):
        try:
            cluster.close()
        except Exception:  # noqa: BLE001 - exiting: close what can be closed
            pass
