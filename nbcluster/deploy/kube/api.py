"""The KubeCluster's side of the Kubernetes API: which API (the official client, or what a
test passes), where the notebook runs, and what a Pod's status means for us.

A KubeCluster uses the Kubernetes API only through :class:`KubeApi`'s ``core`` (CoreV1Api:
pods, services, secrets, logs) and ``batch`` (BatchV1Api: the scheduler's Job). A test hands
in any object with those two attributes, the way httpx takes a transport.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ...errors import ClusterError
from .objects import WORKER_PORT, owner_reference

# where Kubernetes mounts a Pod's service account (the notebook's, on JupyterHub)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# a container waiting for one of these will not start without someone changing something
STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
         "CreateContainerError", "CrashLoopBackOff"}


def import_kubernetes():
    try:
        import kubernetes
    except ImportError:
        raise ImportError("KubeCluster needs the kubernetes client: pip install "
                          "'nbcluster[kubernetes]'") from None
    return kubernetes


_api_client: Any = None


def to_model(data: dict, kind: str) -> Any:
    """``data`` (the API's JSON form) as the client's model ``kind`` (e.g. "V1Pod"), which is
    what every client version accepts as a body. Fields the model does not know are dropped,
    so tests compare the round trip with ``data``."""
    global _api_client
    if _api_client is None:
        _api_client = import_kubernetes().client.ApiClient()
    return _api_client._ApiClient__deserialize(data, kind)


def to_dict(model: Any) -> dict:
    """A model back in the API's JSON form."""
    global _api_client
    if _api_client is None:
        _api_client = import_kubernetes().client.ApiClient()
    return _api_client.sanitize_for_serialization(model)


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a Kubernetes Pod with a service account."""
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and \
        (Path(SERVICE_ACCOUNT_DIR) / "token").exists()


def pod_namespace() -> str | None:
    """This Pod's namespace (its service account's), or None outside a Pod."""
    try:
        return (Path(SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip() or None
    except OSError:
        return None


class KubeApi:
    """``core`` (CoreV1Api) and ``batch`` (BatchV1Api) of one Kubernetes API."""

    def __init__(self, core: Any, batch: Any) -> None:
        self.core, self.batch = core, batch

    @classmethod
    def connect(cls, inside: bool) -> "KubeApi":
        """From the Pod's service account when ``inside`` a cluster, else from
        ``KUBECONFIG`` (or ``~/.kube/config``)."""
        k8s = import_kubernetes()
        try:
            if inside:
                k8s.config.load_incluster_config()
            else:
                k8s.config.load_kube_config()
        except Exception as e:
            raise ClusterError(f"KubeCluster: no Kubernetes configuration ({e}); outside a "
                               "cluster, set KUBECONFIG or write ~/.kube/config (kubectl's "
                               "configuration)") from None
        client = k8s.client.ApiClient()
        return cls(k8s.client.CoreV1Api(client), k8s.client.BatchV1Api(client))


def wrap(api: Any) -> KubeApi:
    """What ``KubeCluster(api=...)`` takes: a KubeApi, a ``kubernetes.client.ApiClient``, or
    any object with ``core`` and ``batch``."""
    if isinstance(api, KubeApi):
        return api
    if hasattr(api, "core") and hasattr(api, "batch"):
        return KubeApi(api.core, api.batch)
    k8s = import_kubernetes()
    if isinstance(api, k8s.client.ApiClient):
        return KubeApi(k8s.client.CoreV1Api(api), k8s.client.BatchV1Api(api))
    raise TypeError(f"api must be a kubernetes.client.ApiClient (or an object with core and "
                    f"batch APIs), got {api!r}")


def default_namespace(inside: bool) -> str:
    """The Pod's own namespace inside a cluster, else the kubeconfig context's."""
    if inside:
        return pod_namespace() or "default"
    try:
        _, active = import_kubernetes().config.list_kube_config_contexts()
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


def status_code(e: BaseException) -> int | None:
    """The HTTP status of a client ApiException (any version), else None."""
    return getattr(e, "status", None) if type(e).__name__ == "ApiException" else None


def notebook_owner(api: KubeApi, namespace: str,
                   environ: Mapping[str, str] | None = None) -> tuple[dict | None, str]:
    """The owner reference to this notebook's Pod (its name is ``HOSTNAME``) and how it was
    found, or None and why not: the cluster is then not garbage-collected with the notebook."""
    env = os.environ if environ is None else environ
    if not in_cluster(env):
        return None, "the notebook does not run in a Kubernetes Pod"
    name = env.get("HOSTNAME", "")
    if not name:
        return None, "HOSTNAME is not set, so the notebook's Pod is unknown"
    ns = pod_namespace() or namespace
    if ns != namespace:
        return None, (f"the notebook's Pod is in namespace {ns!r}, the cluster in "
                      f"{namespace!r} (owners must share a namespace)")
    try:
        pod = api.core.read_namespaced_pod(name, namespace)
    except Exception as e:
        code = status_code(e)
        why = "not found" if code == 404 else f"HTTP {code}" if code else str(e)
        return None, f"cannot read the notebook's Pod {name!r} ({why})"
    return owner_reference("v1", "Pod", name, pod.metadata.uid), f"owned by the Pod {name}"


def pod_state(pod: Any) -> tuple[str, str]:
    """``(state, detail)`` of a Pod model: "ready" (running, passing its readiness probe, with
    an IP), "pending", "stuck" (will not start as it is) or "ended"."""
    status = pod.status
    if status is None:
        return "pending", "no status yet"
    containers = status.container_statuses or []
    if status.phase in ("Succeeded", "Failed"):
        for c in containers:
            done = c.state.terminated if c.state else None
            if done is not None:
                return "ended", (f"exited with code {done.exit_code}"
                                 + (f" ({done.reason})" if done.reason else "")
                                 + (f": {done.message}" if done.message else ""))
        return "ended", f"{status.phase}: {status.reason or ''} {status.message or ''}".strip()
    for c in containers:
        waiting = c.state.waiting if c.state else None
        if waiting is not None and waiting.reason in STUCK:
            return "stuck", f"{waiting.reason}: {waiting.message or ''}".strip()
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    if status.phase == "Running" and ready and status.pod_ip:
        return "ready", status.pod_ip
    for c in status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False":
            return "pending", f"not scheduled yet: {c.reason}: {c.message}"
    return "pending", status.phase or "Pending"


def worker_address(pod_ip: str) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"tcp://{host}:{WORKER_PORT}"
