"""The Kubernetes objects KubeCluster builds and the manifests in kubernetes/: each one survives
a round trip through the official client's models unchanged (a misspelt or misplaced field
would be dropped), and they keep the invariants that matter: labels, owners, the token only
through the Secret, a Service that selects the scheduler, workers that advertise their Pod IP."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")
import yaml  # noqa: E402  (a dependency of the kubernetes client)

from nbcluster.deploy.kube import api, objects as o  # noqa: E402
from nbcluster.deploy.kube.api import pod_state, to_dict, to_model  # noqa: E402

pytestmark = pytest.mark.timeout(10)
ROOT = Path(__file__).parent.parent / "kubernetes"
MODELS = {"Pod": "V1Pod", "Service": "V1Service", "Secret": "V1Secret", "Job": "V1Job",
          "Deployment": "V1Deployment", "ServiceAccount": "V1ServiceAccount", "Role": "V1Role",
          "RoleBinding": "V1RoleBinding"}
TOKEN = "s3cret-token-value-0123456789"
OWNER = o.owner_reference("v1", "Pod", "jupyter-alice", "uid-1")
RESOURCES = o.check_resources({"requests": {"cpu": "500m"}, "limits": {"cpu": 2,
                                                                      "memory": "4Gi"}})


def round_trip(body: dict) -> dict:
    return to_dict(to_model(body, MODELS[body["kind"]]))


def built() -> list[dict]:
    job = o.scheduler_job("nb-1", "ns", "cid1", "img:1", {"A": "1"}, {}, 600.0, [OWNER])
    owned = [o.owner_reference("batch/v1", "Job", "nb-1-scheduler", "uid-2")]
    return [o.token_secret("nb-1", "ns", "cid1", TOKEN, owned), job,
            o.scheduler_service("nb-1", "ns", "cid1", owned),
            o.worker_pod("nb-1", "ns", "cid1", "nb-1-worker-0", "img:1", {"A": "1"}, RESOURCES,
                         2, 4 * 2**30, ["high", "default"], owned, "IfNotPresent")]


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]
    if "template" in spec:
        spec = spec["template"]["spec"]
    return spec.get("containers", [])


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"] if "template" in obj["spec"] \
        else obj["metadata"]["labels"]


@pytest.mark.parametrize("body", built(), ids=lambda b: b["kind"])
def test_every_built_object_round_trips_through_the_client_models(body):
    assert round_trip(body) == body


def test_a_misspelt_field_does_not_survive_the_round_trip():
    """What makes the round trips above a check (the client drops what its models lack)."""
    pod = built()[3]
    pod["spec"]["containers"][0]["readinessprobe"] = pod["spec"]["containers"][0]["readinessProbe"]
    assert round_trip(pod) != pod


def test_built_objects_are_labelled_owned_and_carry_the_token_only_in_the_secret():
    secret, job, service, worker = built()
    for obj in (secret, job, service, worker):
        labels = obj["metadata"]["labels"]
        assert labels[o.LABEL_CLUSTER] == "nb-1" and labels[o.LABEL_ID] == "cid1"
        assert labels["app.kubernetes.io/name"] == "nbcluster"
        assert obj["metadata"]["namespace"] == "ns"
        if obj is not secret:
            assert TOKEN not in str(obj), f"the token leaked into the {obj['kind']}"
    assert job["metadata"]["ownerReferences"] == [OWNER]
    assert secret["stringData"] == {"token": TOKEN}
    for obj in (job, worker):
        [c] = containers(obj)
        ref = next(e for e in c["env"] if e["name"] == "NBCLUSTER_TOKEN")["valueFrom"]
        assert ref == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}}
        assert "--token" not in c["args"] and "--token-stdin" not in c["args"]
        assert {"name": "A", "value": "1"} in c["env"]
        spec = obj["spec"]["template"]["spec"] if obj is job else obj["spec"]
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        port = c["readinessProbe"]["tcpSocket"]["port"]
        assert port == c["ports"][0]["containerPort"]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert containers(job)[0]["args"][-2:] == ["--idle-timeout", "600s"]


def test_the_service_selects_the_scheduler_pod_and_the_workers_find_it():
    _, job, service, worker = built()
    template = pod_labels(job)
    assert service["spec"]["selector"].items() <= template.items()
    assert not service["spec"]["selector"].items() <= worker["metadata"]["labels"].items()
    names = {p["name"] for p in containers(job)[0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    args = containers(worker)[0]["args"]
    assert args[4] == "tcp://nb-1.ns.svc:8786"
    assert args[args.index("--host") + 1] == "$(NBCLUSTER_POD_IP)"
    env = containers(worker)[0]["env"]
    assert env[0] == {"name": "NBCLUSTER_POD_IP",
                      "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert args[args.index("--memory-limit") + 1] == str(4 * 2**30)
    assert args[args.index("--queues") + 1] == "high,default"
    assert containers(worker)[0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}


def test_resources_give_threads_and_memory():
    assert o.cpu_threads(RESOURCES) == 2 and o.memory_bytes(RESOURCES) == 4 * 2**30
    assert o.cpu_threads({"requests": {"cpu": "1500m"}}) == 1
    assert o.cpu_threads({}) == 1 and o.memory_bytes({}) is None


@pytest.mark.parametrize("name", ["", "A", "1abc", "ab-", "a_b", "x" * 41, None])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="name must be"):
        o.check_name(name)


def test_bad_env_is_refused():
    with pytest.raises(TypeError, match="env must be a dict"):
        o.check_env(["A=1"])
    with pytest.raises(ValueError, match="not an environment variable name"):
        o.check_env({"1A": "x"})
    with pytest.raises(TypeError, match="text value"):
        o.check_env({"A": None})
    assert o.check_env({"A": 1}) == {"A": "1"}


def _pod(status: dict) -> object:
    return to_model({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "status": status}, "V1Pod")


def test_pod_states():
    ready = {"phase": "Running", "podIP": "10.1.2.3",
             "conditions": [{"type": "Ready", "status": "True"}]}
    assert pod_state(_pod(ready)) == ("ready", "10.1.2.3")
    assert pod_state(_pod({**ready, "conditions": []}))[0] == "pending"
    assert pod_state(_pod({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient memory."}]})) == \
        ("pending", "not scheduled yet: Unschedulable: 0/3 nodes are available: 3 "
                    "Insufficient memory.")
    waiting = {"name": "c", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
               "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    assert pod_state(_pod({"phase": "Pending", "containerStatuses": [waiting]})) == \
        ("stuck", "ImagePullBackOff: no such image")
    done = {**waiting, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    assert pod_state(_pod({"phase": "Failed", "containerStatuses": [done]})) == \
        ("ended", "exited with code 137 (OOMKilled)")
    assert pod_state(_pod({"phase": "Failed", "reason": "Evicted",
                           "message": "low on memory"})) == \
        ("ended", "Failed: Evicted low on memory")
    assert api.worker_address("fd00::5") == "tcp://[fd00::5]:8788"


def test_notebook_owner_found_only_inside_a_pod(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    pod = SimpleNamespace(metadata=SimpleNamespace(uid="u-9"))
    kube = api.KubeApi(SimpleNamespace(read_namespaced_pod=lambda name, ns: pod), None)
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "jupyter-bob"}
    assert api.notebook_owner(kube, "hub", env) == \
        (None, "the notebook does not run in a Kubernetes Pod")
    (tmp_path / "token").write_text("t")
    (tmp_path / "namespace").write_text("hub")
    assert api.notebook_owner(kube, "hub", env) == (
        {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-bob", "uid": "u-9"},
        "owned by the Pod jupyter-bob")
    assert "owners must share a namespace" in api.notebook_owner(kube, "other", env)[1]
    assert "HOSTNAME is not set" in api.notebook_owner(
        kube, "hub", {"KUBERNETES_SERVICE_HOST": "x"})[1]


# ---------------------------------------------------------------------- kubernetes/
def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(ROOT.glob("*.yaml"))}


def by_kind_name() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for docs in manifests().values() for d in docs}


def test_manifests_round_trip_through_the_client_models():
    found = manifests()
    assert set(found) == {"nbcluster.yaml", "rbac.yaml", "token-secret.example.yaml"}
    for name, docs in found.items():
        for doc in docs:
            assert round_trip(doc) == doc, f"{name}: {doc['kind']} {doc['metadata']['name']}"
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "nbcluster"


def test_manifests_keep_the_invariants():
    objs = by_kind_name()
    secret = objs[("Secret", "nbcluster-token")]
    scheduler = objs[("Deployment", "nbcluster-scheduler")]
    workers = objs[("Deployment", "nbcluster-worker")]
    service = objs[("Service", "nbcluster-scheduler")]
    example_token = secret["stringData"]["token"]
    for dep in (scheduler, workers):
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels(dep).items()
        [c] = containers(dep)
        assert example_token not in str(dep) and "--token" not in c["args"]
        ref = next(e for e in c["env"] if e["name"] == "NBCLUSTER_TOKEN")["valueFrom"]
        assert ref == {"secretKeyRef": {"name": "nbcluster-token", "key": "token"}}
        assert c["readinessProbe"]["tcpSocket"]["port"] == c["ports"][0]["containerPort"]
        assert c["image"] == containers(scheduler)[0]["image"]
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert service["spec"]["selector"].items() <= pod_labels(scheduler).items()
    assert not service["spec"]["selector"].items() <= pod_labels(workers).items()
    ports = {p["name"] for p in containers(scheduler)[0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    args = containers(workers)[0]["args"]
    assert args[4] == f"tcp://{service['metadata']['name']}:8786"
    assert args[args.index("--host") + 1] == "$(NBCLUSTER_POD_IP)"
    [c] = containers(workers)
    limit = c["resources"]["limits"]["memory"]
    from kubernetes.utils import parse_quantity

    from nbcluster.config import parse_memory_limit
    assert parse_memory_limit(args[args.index("--memory-limit") + 1]) <= parse_quantity(limit)


def test_rbac_allows_every_call_kubecluster_makes():
    rules = by_kind_name()[("Role", "nbcluster-kubecluster")]["rules"]
    allowed = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    needed = {("pods", v) for v in ("create", "get", "list", "delete", "deletecollection")} | \
        {("pods/log", "get"), ("pods/portforward", "create"), ("services", "create"),
         ("services", "delete"), ("secrets", "create"), ("secrets", "patch"),
         ("secrets", "delete"), ("jobs", "create"), ("jobs", "delete")}
    assert needed <= allowed
    binding = by_kind_name()[("RoleBinding", "nbcluster-kubecluster")]
    assert binding["roleRef"]["name"] == "nbcluster-kubecluster"
    assert ("ServiceAccount", binding["subjects"][0]["name"]) in by_kind_name()


def test_dockerfile_installs_nbcluster_and_the_dashboard():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir /src/nbcluster" in text and "bokeh" in text
    assert "USER 1000" in text
    for port in ("8786", "8787", "8788"):
        assert port in text
