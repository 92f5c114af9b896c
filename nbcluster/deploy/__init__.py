"""Starting clusters: LocalCluster, SSHCluster (``nbcluster.SSHCluster``, imported when first
used), adaptive scaling, the command line."""

from .local import LocalCluster

__all__ = ["LocalCluster"]
