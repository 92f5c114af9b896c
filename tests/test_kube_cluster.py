"""KubeCluster's life against a fake Kubernetes API (tests/kube_fake.py): start, scale, adapt,
a worker Pod that fails is replaced, close deletes everything with its label and nothing else,
the notebook's Pod owns the cluster. The scheduler it connects to is a real one in this process,
reached through a fake ``kubectl port-forward`` (a script printing what kubectl prints)."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

from kube_fake import DASHBOARD_TOKEN, FakeKube  # noqa: E402

from nbcluster import Client  # noqa: E402
from nbcluster.deploy.kube import KubeCluster, api, cluster as kube_cluster  # noqa: E402
from nbcluster.deploy.kube import portforward  # noqa: E402
from nbcluster.deploy.kube.objects import LABEL_ID  # noqa: E402
from nbcluster.errors import ClusterError  # noqa: E402
from nbcluster.loop_thread import LoopThread  # noqa: E402
from nbcluster.server.scheduler import Scheduler  # noqa: E402
from nbcluster.testing.polling import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(20)
TOKEN = "k" * 40
FAKE_KUBECTL = """\
    #!{python}
    import json, os, sys, time
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    ports = dict(p.split("=") for p in os.environ["FAKE_KUBECTL_PORTS"].split(","))
    for spec in sys.argv[5:]:
        local, remote = spec.split(":")
        print(f"Forwarding from 127.0.0.1:{{local or ports[remote]}} -> {{remote}}", flush=True)
        print(f"Forwarding from [::1]:{{local or ports[remote]}} -> {{remote}}", flush=True)
    marker = os.environ["FAKE_KUBECTL_LOG"] + ".exited"
    if os.environ.get("FAKE_KUBECTL_EXIT_ONCE") and not os.path.exists(marker):
        open(marker, "w").close()
        print("error: lost connection to pod", flush=True)
        sys.exit(1)
    time.sleep(600)   # (a stand-in for kubectl's long-running port-forward: the test kills it)
"""


@pytest.fixture
def scheduler():
    """A real scheduler on 127.0.0.1: what the fake port-forward leads to."""
    thread = LoopThread("nbcluster-test-kube-scheduler")

    async def start():
        return await Scheduler("tcp://127.0.0.1:0", token=TOKEN).start()
    s = thread.run(start())
    yield s
    thread.run(s.close())
    thread.stop()


@pytest.fixture
def kubectl(tmp_path, scheduler, monkeypatch):
    path = tmp_path / "kubectl"
    path.write_text(textwrap.dedent(FAKE_KUBECTL.format(python=sys.executable)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    port = scheduler.address.rsplit(":", 1)[1]
    monkeypatch.setenv("FAKE_KUBECTL_PORTS", f"8786={port},8787=41234")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(tmp_path / "kubectl.log"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


def kubectl_runs(path: Path) -> list[list[str]]:
    log = path.parent / "kubectl.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def start(fake, kubectl, **kw) -> KubeCluster:
    kw = {"n_workers": 2, "namespace": "ns1", "image": "reg.example/nb:1", "timeout": 5, **kw}
    return KubeCluster(api=fake, port_forward=True, kubectl=str(kubectl), poll_interval=0.01,
                       token=TOKEN, close_timeout=1, **kw)


def mine(fake, cid: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind in ("Secret", "Service", "Job", "Pod"):
        out[kind] = sorted(o["metadata"]["name"] for o in fake.of(kind)
                           if o["metadata"].get("labels", {}).get(LABEL_ID) == cid)
    return out


def test_start_builds_the_cluster_and_close_deletes_it_and_nothing_else(kubectl, scheduler):
    fake = FakeKube()
    other = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "someone-else", "namespace": "ns1", "labels": {LABEL_ID: "another"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}
    fake.add(other)
    fake.add({**other, "metadata": {"name": "unlabelled", "namespace": "ns1"}})
    cluster = start(fake, kubectl)
    cid, name = cluster.cluster_id, cluster.name
    try:
        objs = mine(fake, cid)
        assert objs["Secret"] == [f"{name}-token"] and objs["Service"] == [name]
        assert objs["Job"] == [f"{name}-scheduler"]
        workers = [n for n in objs["Pod"] if "-worker-" in n]
        assert workers == [f"{name}-worker-0", f"{name}-worker-1"]
        job = fake.get("Job", "ns1", f"{name}-scheduler")
        assert "ownerReferences" not in job["metadata"], "outside a Pod nothing owns the Job"
        assert "--idle-timeout" in job["spec"]["template"]["spec"]["containers"][0]["args"]
        for kind, obj in [("Secret", f"{name}-token"), ("Service", name),
                          *(("Pod", w) for w in workers)]:
            owners = fake.get(kind, "ns1", obj)["metadata"]["ownerReferences"]
            assert owners == [{"apiVersion": "batch/v1", "kind": "Job",
                               "name": f"{name}-scheduler", "uid": job["metadata"]["uid"]}]
        port = scheduler.address.rsplit(":", 1)[1]
        assert cluster.scheduler_address == f"tcp://127.0.0.1:{port}"
        assert cluster.dashboard_link == f"http://127.0.0.1:41234/status?token={DASHBOARD_TOKEN}"
        run = kubectl_runs(kubectl)[0]
        assert run[:4] == ["port-forward", "-n", "ns1", "pod/" + cluster.pods()[0]["pod"]]
        assert cluster.workers == ["tcp://10.0.0.3:8788", "tcp://10.0.0.4:8788"]
        assert f"kubernetes ns1/{name}" in repr(cluster) and "workers=2" in repr(cluster)
        assert scheduler.state.clients, "the cluster keeps a client connected (idle timeout)"
        with Client(cluster, set_as_default=False) as client:   # what a user does
            assert client.status == "running"
    finally:
        cluster.close()
    assert mine(fake, cid) == {"Secret": [], "Service": [], "Job": [], "Pod": []}
    left = sorted(o["metadata"]["name"] for o in fake.of("Pod"))
    assert left == ["someone-else", "unlabelled"]
    assert not scheduler.state.clients
    cluster.close()   # idempotent


def test_the_real_client_accepts_every_call_as_made(kubectl):
    """Each call a KubeCluster's life made on the fake is replayed on the official client's
    CoreV1Api/BatchV1Api aimed at a closed port: it must get as far as connecting (the
    client checks argument names and types first, and the body's model)."""
    import kubernetes.client as k
    from urllib3.exceptions import HTTPError

    fake = FakeKube()
    with start(fake, kubectl, n_workers=1) as cluster:
        cluster.scale(2)
        cluster.get_logs()
        fake.fail("ns1", f"{cluster.name}-worker-0")
        wait_until(lambda: cluster.restarts == 1, "the replacement")
    config = k.Configuration()
    config.host, config.retries = "http://127.0.0.1:9", False
    client = k.ApiClient(config)
    real = {"core": k.CoreV1Api(client), "batch": k.BatchV1Api(client)}
    made = {name for name, _, _ in fake.raw}
    assert made >= {"create_namespaced_job", "patch_namespaced_secret", "list_namespaced_pod",
                    "delete_namespaced_pod", "delete_collection_namespaced_pod"}
    first = {}   # one call of each method (the pods are listed hundreds of times)
    for name, args, kwargs in fake.raw:
        first.setdefault((name, tuple(kwargs)), (name, args, kwargs))
    for name, args, kwargs in first.values():
        api_object = real["batch" if name.endswith("_job") else "core"]
        with pytest.raises(HTTPError):
            getattr(api_object, name)(*args, **kwargs)


def test_scale_adapt_and_a_failed_worker_is_replaced(kubectl, caplog):
    fake = FakeKube()
    with start(fake, kubectl, n_workers=1) as cluster:
        name = cluster.name
        cluster.scale(3)
        assert len(cluster.workers) == 3
        assert mine(fake, cluster.cluster_id)["Pod"].count(f"{name}-worker-2") == 1
        cluster.scale(1)
        assert [n for n in mine(fake, cluster.cluster_id)["Pod"] if "-worker-" in n] == \
            [f"{name}-worker-0"]
        with caplog.at_level(logging.WARNING):
            fake.fail("ns1", f"{name}-worker-0", code=137, reason="OOMKilled")
            wait_until(lambda: cluster.restarts == 1 and len(cluster.workers) == 1,
                       "the failed worker's replacement")
        assert "exited with code 137 (OOMKilled)" in caplog.text
        pods = [n for n in mine(fake, cluster.cluster_id)["Pod"] if "-worker-" in n]
        assert pods == [f"{name}-worker-3"], "the failed Pod is deleted, a new one runs"
        adaptive = cluster.adapt(minimum=2, maximum=3, interval=0.02)
        wait_until(lambda: len(cluster.workers) == 2, "adapt to reach its minimum", timeout=10)
        assert adaptive.running
        cluster.scale(0)
        assert not adaptive.running
    assert mine(fake, cluster.cluster_id)["Pod"] == []


def test_a_worker_that_cannot_start_fails_the_start_and_nothing_is_left(kubectl):
    fake = FakeKube()
    fake.start_as["nbcluster-bad-worker-1"] = "ErrImagePull"
    with pytest.raises(ClusterError, match="worker pod nbcluster-bad-worker-1 did not start: "
                                           "ErrImagePull"):
        start(fake, kubectl, name="nbcluster-bad")
    assert not fake.of("Pod") and not fake.of("Job") and not fake.of("Secret")


def test_a_scheduler_that_cannot_start_says_why(kubectl):
    fake = FakeKube()
    fake.start_as["nbcluster-x-scheduler"] = "CreateContainerConfigError"
    with pytest.raises(ClusterError, match="scheduler pod nbcluster-x-scheduler-.* did not "
                                           "start: CreateContainerConfigError"):
        start(fake, kubectl, name="nbcluster-x")
    assert not fake.calls[-1][0] == "create"
    assert not fake.of("Pod") and not fake.of("Service")


def test_a_pending_worker_times_out_with_its_last_state(kubectl):
    fake = FakeKube()
    fake.hold.add("nbcluster-p-worker-0")
    with pytest.raises(ClusterError, match="not ready within 1 s"):
        start(fake, kubectl, name="nbcluster-p", n_workers=1, timeout=1)
    assert not fake.of("Pod")


def test_when_the_scheduler_pod_ends_the_cluster_fails_and_workers_are_not_replaced(kubectl):
    fake = FakeKube()
    with start(fake, kubectl, n_workers=1) as cluster:
        sched = cluster.pods()[0]["pod"]
        fake.fail("ns1", sched, code=0)
        wait_until(lambda: cluster.status == "failed", "the cluster to see its scheduler end")
        fake.fail("ns1", f"{cluster.name}-worker-0", code=1)
        wait_until(lambda: not cluster.workers, "the worker to be counted out")
        assert cluster.restarts == 0
        with pytest.raises(ClusterError, match="no scheduler any more"):
            cluster.scale(2)


def test_port_forward_is_started_again_on_the_same_local_ports(kubectl, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_EXIT_ONCE", "1")
    monkeypatch.setattr(portforward, "RESTART_PAUSE", 0.01)
    forward = portforward.PortForward("ns1", "pod/x", [8786, 8787], str(kubectl), timeout=5)
    try:
        local = forward.start()
        assert local == {8786: int(os.environ["FAKE_KUBECTL_PORTS"].split(",")[0].split("=")[1]),
                         8787: 41234}
        wait_until(lambda: len(kubectl_runs(kubectl)) == 2, "kubectl to be started again")
        assert kubectl_runs(kubectl)[1][4:] == [f"{local[8786]}:8786", "41234:8787"]
    finally:
        forward.stop()


def test_missing_kubectl_says_what_to_do():
    with pytest.raises(ClusterError, match="port_forward needs kubectl"):
        portforward.PortForward("ns", "pod/x", [8786], "no-such-kubectl-here")


def test_in_a_pod_the_notebook_owns_the_cluster_and_its_loss_removes_it(tmp_path, monkeypatch):
    """JupyterHub on Kubernetes: the notebook's Pod owns the Job, which owns the rest, so when
    the Pod goes the garbage collector (which the fake imitates) removes the whole cluster."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("x")
    (sa / "namespace").write_text("hub")
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("HOSTNAME", "jupyter-alice")
    monkeypatch.setenv("JUPYTER_IMAGE_SPEC", "reg.example/hub-user:3")
    monkeypatch.setattr(kube_cluster.KubeCluster, "_connect", lambda self: None)  # no DNS here
    fake = FakeKube()
    notebook = fake.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "jupyter-alice", "namespace": "hub"},
        "spec": {"containers": [{"name": "notebook", "image": "i"}]}})
    fake.hold.add("jupyter-alice")
    cluster = KubeCluster(n_workers=1, api=fake, poll_interval=0.01, timeout=5)
    try:
        assert cluster.namespace == "hub" and not cluster.port_forward
        assert cluster.scheduler_address == f"tcp://{cluster.name}.hub.svc:8786"
        assert cluster.owned_by == "owned by the Pod jupyter-alice"
        job = fake.get("Job", "hub", f"{cluster.name}-scheduler")
        assert job["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice",
             "uid": notebook["metadata"]["uid"]}]
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "reg.example/hub-user:3"
        fake.delete("Pod", "hub", "jupyter-alice")
        assert mine(fake, cluster.cluster_id) == {"Secret": [], "Service": [], "Job": [],
                                                  "Pod": []}
    finally:
        cluster.close()


def test_bad_arguments_are_named(monkeypatch):
    monkeypatch.delenv("JUPYTER_IMAGE_SPEC", raising=False)
    monkeypatch.delenv("JUPYTER_IMAGE", raising=False)
    fake = FakeKube()
    with pytest.raises(ValueError, match="needs image="):
        KubeCluster(api=fake)
    for kw, match in [({"name": "Bad_Name"}, "name must be"),
                      ({"resources": {"limits": {"memory": "lots"}}}, "not a Kubernetes quantity"),
                      ({"resources": {"limit": {}}}, "'requests' and/or 'limits'"),
                      ({"env": {"NBCLUSTER_TOKEN": "x"}}, "set by KubeCluster"),
                      ({"idle_timeout": 0}, "idle_timeout must be positive"),
                      ({"image_pull_policy": "Sometimes"}, "image_pull_policy")]:
        with pytest.raises(ValueError, match=match):
            KubeCluster(image="i", api=fake, **kw)
    with pytest.raises(TypeError, match="api must be"):
        KubeCluster(image="i", api=object())
    assert not fake.calls, "nothing was created"


def test_an_existing_name_is_refused_with_the_command_to_clean_up(kubectl):
    fake = FakeKube()
    fake.add({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "nbcluster-old-token", "namespace": "ns1"}})
    with pytest.raises(ClusterError, match="exists already.*kubectl delete -n ns1 "
                                           "job,pod,service,secret -l nbcluster.io/cluster="
                                           "nbcluster-old"):
        start(fake, kubectl, name="nbcluster-old")
    assert [o["metadata"]["name"] for o in fake.of("Secret")] == ["nbcluster-old-token"]
