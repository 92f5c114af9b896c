"""KubeCluster against a real Kubernetes cluster. Runs only when one is reachable: KUBECONFIG
is set, its API answers, and NBCLUSTER_KUBE_IMAGE names an image with this nbcluster installed
(kubernetes/Dockerfile) that the cluster can pull. Otherwise skipped, saying which is missing.
Outside the cluster it needs kubectl on PATH (the scheduler is reached by port-forward).
Optional: NBCLUSTER_KUBE_NAMESPACE (default: the kubeconfig context's namespace)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

from nbcluster import Client  # noqa: E402
from nbcluster.deploy.kube.objects import LABEL_ID  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _reachable() -> str | None:
    """Why no cluster can be used here, or None."""
    if not os.environ.get("KUBECONFIG"):
        return "no Kubernetes cluster: KUBECONFIG is not set"
    import kubernetes

    try:
        kubernetes.config.load_kube_config()
        kubernetes.client.VersionApi().get_code(_request_timeout=5)
    except Exception as e:
        return f"KUBECONFIG is set but the Kubernetes API does not answer: {e}"
    if not os.environ.get("NBCLUSTER_KUBE_IMAGE"):
        return ("a Kubernetes API answers, but NBCLUSTER_KUBE_IMAGE is not set (an image with "
                "this nbcluster installed, see kubernetes/Dockerfile)")
    return None


def test_kubecluster_on_a_real_cluster():
    why = _reachable()
    if why:
        pytest.skip(why)
    import kubernetes

    from nbcluster import KubeCluster

    namespace = os.environ.get("NBCLUSTER_KUBE_NAMESPACE")
    cluster = KubeCluster(image=os.environ["NBCLUSTER_KUBE_IMAGE"], namespace=namespace,
                          n_workers=1, resources={"limits": {"cpu": "1", "memory": "1Gi"}},
                          env={"NBCLUSTER_TEST": "1"}, timeout=240)
    selector = f"{LABEL_ID}={cluster.cluster_id}"
    core = kubernetes.client.CoreV1Api()
    try:
        with Client(cluster, set_as_default=False) as client:
            assert client.submit(lambda x: x + 1, 1).result(timeout=60) == 2
            cluster.scale(2)
            assert client.wait_for_workers(2, timeout=120) >= 2
            assert sorted(client.gather(client.map(lambda x: x * x, range(20)))) == \
                sorted(x * x for x in range(20))
            if not cluster.port_forward:   # from outside, worker Pods are out of reach
                big = client.submit(lambda: b"x" * 2**20).result(timeout=60)   # from a worker
                assert len(big) == 2**20
            cluster.scale(1)
            assert len(cluster.workers) == 1
    finally:
        cluster.close()
    pods = core.list_namespaced_pod(cluster.namespace, label_selector=selector).items
    assert all(p.metadata.deletion_timestamp for p in pods), "every pod is being deleted"
    assert not core.list_namespaced_service(cluster.namespace, label_selector=selector).items
    assert not core.list_namespaced_secret(cluster.namespace, label_selector=selector).items
