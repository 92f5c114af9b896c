"""A fake Kubernetes API for KubeCluster's tests: the CoreV1Api and BatchV1Api methods the
cluster calls, on objects kept in memory in their JSON form. Every body it receives goes
through the client's models (``to_dict``), so a misspelt field is lost and the tests notice.
It records each call, creates a Job's Pod, runs Pods (Pending -> Running and Ready) on the next
listing unless told otherwise, and collects garbage the way Kubernetes does: an object whose
owners are all gone is deleted, and what it owns after it."""

from __future__ import annotations

import copy
import itertools
import threading
import uuid

from kubernetes.client.exceptions import ApiException

from nbcluster.deploy.kube.api import to_dict, to_model

API_METHODS = ("create_namespaced_secret", "create_namespaced_service", "create_namespaced_pod",
               "create_namespaced_job", "patch_namespaced_secret", "read_namespaced_pod",
               "list_namespaced_pod", "read_namespaced_pod_log", "delete_namespaced_pod",
               "delete_namespaced_service", "delete_namespaced_secret", "delete_namespaced_job",
               "delete_collection_namespaced_pod")
KINDS = {"Pod": "V1Pod", "Service": "V1Service", "Secret": "V1Secret", "Job": "V1Job"}
DASHBOARD_TOKEN = "dash-token-123"


def _matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube:
    def __init__(self) -> None:
        self.core = self.batch = self
        self.objects: dict[tuple[str, str, str], dict] = {}   # (kind, namespace, name)
        self.calls: list[tuple] = []
        self.logs: dict[str, str] = {}
        self.hold: set[str] = set()          # pod names kept Pending
        self.start_as: dict[str, str] = {}   # name prefix -> waiting reason instead of running
        self.lock = threading.Lock()
        self._ips = itertools.count(2)
        self.raw: list[tuple[str, tuple, dict]] = []   # every API call: (method, args, kwargs)
        for name in API_METHODS:
            setattr(self, name, self._recording(name, getattr(self, name)))

    def _recording(self, name, method):
        def call(*args, **kwargs):
            self.raw.append((name, args, kwargs))
            return method(*args, **kwargs)
        return call

    # ---------------------------------------------------------------- helpers for tests
    def of(self, kind: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items()
                    if k == kind and namespace in (None, ns)]

    def get(self, kind: str, namespace: str, name: str) -> dict:
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def add(self, body: dict) -> dict:
        """Put an object there directly (a notebook's Pod, someone else's objects)."""
        with self.lock:
            return self._store(body["kind"], body["metadata"].get("namespace", "default"), body)

    def fail(self, namespace: str, name: str, code: int = 1, reason: str = "Error") -> None:
        """The Pod's container exits with ``code``."""
        with self.lock:
            pod = self.objects[("Pod", namespace, name)]
            pod["status"] = {"phase": "Failed" if code else "Succeeded", "containerStatuses": [
                {"name": "c", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": code, "reason": reason}}}]}

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Someone deletes it (``kubectl delete``): garbage collection follows."""
        with self.lock:
            self._delete(kind, namespace, name)

    # ---------------------------------------------------------------- the API
    def _store(self, kind: str, namespace: str, body: dict) -> dict:
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        body = copy.deepcopy(body)
        body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()))
        self.objects[(kind, namespace, name)] = body
        if kind == "Pod":
            body["status"] = {"phase": "Pending"}
        return body

    def _create(self, kind: str, namespace: str, model) -> object:
        body = to_dict(model)
        self.calls.append(("create", kind, namespace, body["metadata"]["name"]))
        with self.lock:
            stored = self._store(kind, namespace, body)
            if kind == "Job":
                self._job_pod(namespace, stored)
            return to_model(copy.deepcopy(stored), KINDS[kind])

    def _job_pod(self, namespace: str, job: dict) -> None:
        template = job["spec"]["template"]
        name = job["metadata"]["name"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-{uuid.uuid4().hex[:5]}",
                            "labels": {**template["metadata"]["labels"], "job-name": name},
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": name, "uid": job["metadata"]["uid"],
                                                 "controller": True}]},
               "spec": copy.deepcopy(template["spec"])}
        self._store("Pod", namespace, pod)

    def create_namespaced_secret(self, namespace, body):
        return self._create("Secret", namespace, body)

    def create_namespaced_service(self, namespace, body):
        return self._create("Service", namespace, body)

    def create_namespaced_pod(self, namespace, body):
        return self._create("Pod", namespace, body)

    def create_namespaced_job(self, namespace, body):
        return self._create("Job", namespace, body)

    def patch_namespaced_secret(self, name, namespace, body):
        self.calls.append(("patch", "Secret", namespace, name))
        with self.lock:
            secret = self.objects[("Secret", namespace, name)]
            secret["metadata"].update(copy.deepcopy(body["metadata"]))
            return to_model(copy.deepcopy(secret), "V1Secret")

    def read_namespaced_pod(self, name, namespace):
        with self.lock:
            pod = self.objects.get(("Pod", namespace, name))
            if pod is None:
                raise ApiException(status=404, reason="NotFound")
            return to_model(copy.deepcopy(pod), "V1Pod")

    def list_namespaced_pod(self, namespace, label_selector=None):
        with self.lock:
            items = []
            for (kind, ns, name), pod in self.objects.items():
                if kind == "Pod" and ns == namespace and \
                        _matches(pod["metadata"].get("labels", {}), label_selector):
                    self._advance(pod)
                    items.append(copy.deepcopy(pod))
            return to_model({"apiVersion": "v1", "kind": "PodList", "items": items}, "V1PodList")

    def _advance(self, pod: dict) -> None:
        """A Pending pod runs (or gets stuck) when next listed."""
        name = pod["metadata"]["name"]
        if pod["status"]["phase"] != "Pending" or name in self.hold:
            return
        stuck = next((r for prefix, r in self.start_as.items() if name.startswith(prefix)), None)
        if stuck:
            pod["status"]["containerStatuses"] = [
                {"name": "c", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"waiting": {"reason": stuck, "message": "as the test said"}}}]
            return
        pod["status"] = {"phase": "Running", "podIP": f"10.0.0.{next(self._ips)}",
                         "conditions": [{"type": "Ready", "status": "True"}]}
        if pod["metadata"]["labels"].get("app.kubernetes.io/component") == "scheduler":
            self.logs[name] = ("nbcluster scheduler at tcp://0.0.0.0:8786\n"
                               f"dashboard at http://{name}:8787/status?token={DASHBOARD_TOKEN}\n"
                               "connection file (address and token, readable only by you): x\n")

    def read_namespaced_pod_log(self, name, namespace, tail_lines=None, container=None):
        return self.logs.get(name, "")

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is None:
            raise ApiException(status=404, reason="NotFound")
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        while True:
            uids = {o["metadata"]["uid"] for o in self.objects.values()}
            orphans = [key for key, o in self.objects.items()
                       if o["metadata"].get("ownerReferences")
                       and not any(r["uid"] in uids for r in o["metadata"]["ownerReferences"])]
            if not orphans:
                return
            for key in orphans:
                del self.objects[key]

    def _deleting(self, kind, name, namespace):
        self.calls.append(("delete", kind, namespace, name))
        with self.lock:
            self._delete(kind, namespace, name)

    def delete_namespaced_pod(self, name, namespace, grace_period_seconds=None):
        self._deleting("Pod", name, namespace)

    def delete_namespaced_service(self, name, namespace):
        self._deleting("Service", name, namespace)

    def delete_namespaced_secret(self, name, namespace):
        self._deleting("Secret", name, namespace)

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy in ("Background", "Foreground"), "the Job's Pod must go too"
        self._deleting("Job", name, namespace)

    def delete_collection_namespaced_pod(self, namespace, label_selector=None):
        assert label_selector, "never every pod of the namespace"
        self.calls.append(("delete-collection", "Pod", namespace, label_selector))
        with self.lock:
            for key, o in list(self.objects.items()):
                if key[0] == "Pod" and key[1] == namespace and \
                        _matches(o["metadata"].get("labels", {}), label_selector):
                    del self.objects[key]
            self._collect_garbage()
