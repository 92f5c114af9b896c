"""What a client needs of the cluster it is given (``Client(cluster)``).

The client layer never imports ``deploy``: it relies on this interface, which
``nbcluster.deploy.Cluster`` (LocalCluster, SSHCluster, ...) satisfies, and so may any other
object that starts a scheduler and workers.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ClusterLike(Protocol):
    """A scheduler and workers started by this process."""

    scheduler_address: str | None
    token: str | None
    security: Any

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's status page, or None."""

    def restart_workers(self, timeout: float | None = None) -> None:
        """Replace every worker by a new one (what ``client.restart()`` calls, blocking)."""

    def close(self) -> None:
        """Stop the workers and the scheduler (when the client owns the cluster)."""
