"""nbcluster in Jupyter: the ``%cluster`` magic, live progress and cluster widgets, HTML reprs,
and task output shown in the cell that submitted the task.

Load it in a notebook with ``%load_ext nbcluster``. To have ``%cluster`` without that line, put
one of these in the IPython profile's ``ipython_kernel_config.py`` (``ipython locate profile``
shows where it is; ``ipython profile create`` makes it)::

    c.MagicsManager.lazy_magics = {"cluster": "nbcluster"}   # loads on the first %cluster
    c.InteractiveShellApp.extensions = ["nbcluster"]         # loads when the kernel starts

Only the public client API is used here; IPython and ipywidgets are imported lazily, so
``import nbcluster`` stays light.
"""

from __future__ import annotations

from typing import Any

_STATE_ATTR = "_nbcluster_jupyter"


class _Extension:
    """What the extension adds to one shell; removed again by ``unload_ipython_extension``."""

    def __init__(self, ip: Any) -> None:
        from .html import register_formatters
        from .magics import ClusterMagics

        self.ip = ip
        self.router = None
        if getattr(ip, "kernel", None) is not None:
            from .output import OutputRouter

            self.router = OutputRouter(ip)
        self.magics = ClusterMagics(ip, on_client=self.attach)
        ip.register_magics(self.magics)
        register_formatters(ip)
        ip.events.register("pre_run_cell", self._adopt_default_client)
        self._adopt_default_client()

    def attach(self, client: Any) -> None:
        """Route this client's task output into the submitting cells."""
        if self.router is not None:
            self.router.attach(client)

    def _adopt_default_client(self, *args: Any) -> None:
        # a client made by hand (client = Client(...)) also gets its output routed
        from ..client import default_client

        try:
            client = default_client()
        except Exception:  # noqa: BLE001 - no client yet
            return
        if self.router is not None and not self.router.attached(client):
            self.router.attach(client)
        self.magics._session.adopt(client)

    def unload(self) -> None:
        from .html import unregister_formatters

        try:
            self.ip.events.unregister("pre_run_cell", self._adopt_default_client)
        except ValueError:
            pass
        self.magics.close()
        if self.router is not None:
            self.router.close()
        unregister_formatters(self.ip)
        magics = self.ip.magics_manager.magics["line"]
        # IPython types line_magic's result as the method or a decorator (a union, no overloads)
        if magics.get("cluster") == self.magics.cluster:  # type: ignore[misc]
            del magics["cluster"]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext nbcluster``: register ``%cluster``, formatters and output routing."""
    if getattr(ip, _STATE_ATTR, None) is not None:
        return
    setattr(ip, _STATE_ATTR, _Extension(ip))


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext nbcluster``: stop a cluster ``%cluster start`` made and undo the rest."""
    ext = getattr(ip, _STATE_ATTR, None)
    if ext is None:
        return
    setattr(ip, _STATE_ATTR, None)
    ext.unload()


def progress_widget(futures: Any, **kwargs: Any):
    """A live progress bar per function name (see ``widgets.progress_widget``)."""
    from .widgets import progress_widget as make

    return make(futures, **kwargs)


__all__ = ["load_ipython_extension", "unload_ipython_extension", "progress_widget"]
