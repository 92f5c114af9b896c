"""Starting clusters: LocalCluster, the command line."""

from .local import LocalCluster

__all__ = ["LocalCluster"]
