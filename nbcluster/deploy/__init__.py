"""Starting clusters: the Cluster base every kind shares, LocalCluster, SSHCluster
(``nbcluster.SSHCluster``, imported when first used), adaptive scaling."""

from .cluster import Cluster, WorkerSpec
from .local import LocalCluster

__all__ = ["Cluster", "LocalCluster", "WorkerSpec"]
