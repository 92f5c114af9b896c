"""The Kubernetes objects a KubeCluster creates, as plain dicts in the API's own (camelCase)
form: what ``kubectl get -o yaml`` shows and what the manifests in ``kubernetes/`` hold. Pure
functions, no API calls; ``api.to_model`` turns each into the client's model before it is sent,
which also checks every field name.

One cluster is:

- a Secret ``NAME-token`` holding the token (key ``token``): pods read it into
  ``NBCLUSTER_TOKEN`` through ``secretKeyRef``, so it appears in no Pod spec or command line;
- a Job ``NAME-scheduler`` whose one Pod runs ``nbcluster scheduler`` (``backoffLimit: 0``: a
  scheduler that fails is not restarted with an empty task table; ``ttlSecondsAfterFinished``:
  once it ends, Kubernetes deletes the Job, and with it everything the Job owns);
- a Service ``NAME`` in front of it (ports 8786 and 8787), so that ``NAME.NAMESPACE.svc`` is
  the scheduler's address for workers and for notebooks inside the cluster;
- worker Pods ``NAME-worker-N`` (``restartPolicy: Never``: a worker that ends is replaced by
  the cluster's books, the way LocalCluster and SSHCluster replace theirs).

Every object carries the labels of :func:`labels`; the Secret, Service and workers are owned by
the Job, and the Job by the notebook's Pod when the notebook runs in one.
"""

from __future__ import annotations

import re
from typing import Any

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_PORT = 8788
TOKEN_KEY = "token"
TOKEN_ENV = "NBCLUSTER_TOKEN"
POD_IP_ENV = "NBCLUSTER_POD_IP"
JOB_TTL = 60   # seconds a finished scheduler Job (and what it owns) stays for a post-mortem

LABEL_CLUSTER = "nbcluster.io/cluster"        # the cluster's name
LABEL_ID = "nbcluster.io/cluster-id"          # this KubeCluster: what close() deletes
LABEL_COMPONENT = "app.kubernetes.io/component"
COMMON_LABELS = {"app.kubernetes.io/name": "nbcluster", "app.kubernetes.io/managed-by": "nbcluster"}

NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = 40     # leaves room for "-scheduler" (a label value, at most 63) and "-worker-N"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        raise ValueError(f"name must be lower-case letters, digits and '-', start with a letter, "
                         f"end with a letter or digit, at most {MAX_NAME} characters (it names "
                         f"a Service, whose DNS name it becomes), got {name!r}")
    return name


def check_env(env: Any) -> dict[str, str]:
    """``{NAME: value}`` for the containers; values become text."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TypeError(f"env must be a dict of environment variables, got {env!r}")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise ValueError(f"env: {key!r} is not an environment variable name")
        if key in (TOKEN_ENV, POD_IP_ENV):
            raise ValueError(f"env: {key} is set by KubeCluster (the token comes from the "
                             "cluster's Secret)")
        if value is None or isinstance(value, (dict, list)):
            raise TypeError(f"env: {key} must have a text value, got {value!r}")
        out[key] = str(value)
    return out


def check_resources(resources: Any) -> dict[str, dict[str, str]]:
    """``{"requests": {...}, "limits": {...}}`` as a container's ``resources``, quantities
    checked (``"2"``, ``"500m"``, ``"4Gi"``)."""
    if resources is None:
        return {}
    if not isinstance(resources, dict) or not set(resources) <= {"requests", "limits"}:
        raise ValueError(f"resources must be a dict with 'requests' and/or 'limits', such as "
                         f"{{'limits': {{'cpu': '2', 'memory': '4Gi'}}}}, got {resources!r}")
    from kubernetes.utils import parse_quantity

    out: dict[str, dict[str, str]] = {}
    for part, values in resources.items():
        if not isinstance(values, dict):
            raise ValueError(f"resources[{part!r}] must be a dict such as "
                             f"{{'cpu': '2', 'memory': '4Gi'}}, got {values!r}")
        out[part] = {}
        for key, value in values.items():
            try:
                parse_quantity(value)
            except (ValueError, TypeError):
                raise ValueError(f"resources[{part!r}][{key!r}]: {value!r} is not a Kubernetes "
                                 "quantity such as '2', '500m' or '4Gi'") from None
            out[part][str(key)] = str(value)
    return out


def memory_bytes(resources: dict) -> int | None:
    """The container's memory limit in bytes (what its worker should stay under), else None."""
    value = resources.get("limits", {}).get("memory")
    if value is None:
        return None
    from kubernetes.utils import parse_quantity

    return int(parse_quantity(value))


def cpu_threads(resources: dict) -> int:
    """Threads for a worker: its CPU limit (else request), rounded down, at least 1."""
    for part in ("limits", "requests"):
        value = resources.get(part, {}).get("cpu")
        if value is not None:
            from kubernetes.utils import parse_quantity

            return max(1, int(parse_quantity(value)))
    return 1


def labels(name: str, cluster_id: str, component: str | None = None) -> dict[str, str]:
    out = {**COMMON_LABELS, LABEL_CLUSTER: name, LABEL_ID: cluster_id}
    if component:
        out[LABEL_COMPONENT] = component
    return out


def selector(cluster_id: str) -> str:
    """The label selector of everything one KubeCluster made."""
    return f"{LABEL_ID}={cluster_id}"


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict:
    # no blockOwnerDeletion: it needs the right to update the owner's finalizers, which a
    # notebook's service account seldom has; garbage collection works without it
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def _metadata(name: str, namespace: str, label_set: dict, owners: list[dict]) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(label_set)}
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    return meta


def token_secret(name: str, namespace: str, cluster_id: str, token: str,
                 owners: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _metadata(f"{name}-token", namespace, labels(name, cluster_id, "token"),
                                  owners),
            "stringData": {TOKEN_KEY: token}}


def _env(name: str, extra: dict[str, str]) -> list[dict]:
    token = {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": f"{name}-token",
                                                                "key": TOKEN_KEY}}}
    return [token, *({"name": k, "value": v} for k, v in extra.items())]


def _container(role: str, image: str, args: list[str], env: list[dict], ports: list[dict],
               resources: dict, image_pull_policy: str | None) -> dict:
    container: dict[str, Any] = {
        "name": role, "image": image, "args": args, "env": env, "ports": ports,
        # ready once it listens: the scheduler for workers, a worker for its peers
        "readinessProbe": {"tcpSocket": {"port": ports[0]["containerPort"]},
                           "periodSeconds": 2},
    }
    if resources:
        container["resources"] = {k: dict(v) for k, v in resources.items()}
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    return container


def _pod_spec(container: dict) -> dict:
    return {"restartPolicy": "Never", "containers": [container],
            # neither process talks to the Kubernetes API
            "automountServiceAccountToken": False, "enableServiceLinks": False}


def scheduler_job(name: str, namespace: str, cluster_id: str, image: str, env: dict[str, str],
                  resources: dict, idle_timeout: float | None, owners: list[dict],
                  image_pull_policy: str | None = None) -> dict:
    args = ["python", "-m", "nbcluster", "scheduler", "--host", "0.0.0.0",
            "--port", str(SCHEDULER_PORT), "--dashboard-port", str(DASHBOARD_PORT)]
    if idle_timeout is not None:
        args += ["--idle-timeout", f"{idle_timeout:g}s"]
    ports = [{"name": "scheduler", "containerPort": SCHEDULER_PORT},
             {"name": "dashboard", "containerPort": DASHBOARD_PORT}]
    pod_labels = labels(name, cluster_id, "scheduler")
    container = _container("scheduler", image, args, _env(name, env), ports, resources,
                           image_pull_policy)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(f"{name}-scheduler", namespace, pod_labels, owners),
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL,
                     "template": {"metadata": {"labels": pod_labels},
                                  "spec": _pod_spec(container)}}}


def scheduler_service(name: str, namespace: str, cluster_id: str, owners: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(name, namespace, labels(name, cluster_id, "scheduler"), owners),
            "spec": {"type": "ClusterIP",
                     "selector": {LABEL_ID: cluster_id, LABEL_COMPONENT: "scheduler"},
                     "ports": [{"name": "scheduler", "port": SCHEDULER_PORT,
                                "targetPort": "scheduler"},
                               {"name": "dashboard", "port": DASHBOARD_PORT,
                                "targetPort": "dashboard"}]}}


def service_host(name: str, namespace: str) -> str:
    """The scheduler's DNS name inside the cluster (any cluster domain: pods' resolv.conf
    completes ``.svc``)."""
    return f"{name}.{namespace}.svc"


def worker_pod(name: str, namespace: str, cluster_id: str, pod_name: str, image: str,
               env: dict[str, str], resources: dict, nthreads: int,
               memory_limit: int | str | None, queues: list[str] | None, owners: list[dict],
               image_pull_policy: str | None = None) -> dict:
    address = f"tcp://{service_host(name, namespace)}:{SCHEDULER_PORT}"
    args = ["python", "-m", "nbcluster", "worker", address, "--name", pod_name,
            "--nthreads", str(nthreads),
            # the pod's own IP: what the scheduler and the other workers reach it on
            "--host", f"$({POD_IP_ENV})", "--port", str(WORKER_PORT),
            "--memory-limit", "none" if memory_limit is None else str(memory_limit)]
    if queues:
        args += ["--queues", ",".join(queues)]
    pod_ip = {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    container = _container("worker", image, args, [pod_ip, *_env(name, env)],
                           [{"name": "worker", "containerPort": WORKER_PORT}], resources,
                           image_pull_policy)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _metadata(pod_name, namespace, labels(name, cluster_id, "worker"),
                                  owners),
            "spec": _pod_spec(container)}
