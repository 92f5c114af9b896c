"""KubeCluster: nbcluster on Kubernetes, with the official ``kubernetes`` client
(``pip install 'nbcluster[kubernetes]'``). ``objects.py`` builds the objects, ``api.py`` talks
to the API, ``portforward.py`` reaches the scheduler from outside the cluster."""

from .cluster import KubeCluster

__all__ = ["KubeCluster"]
