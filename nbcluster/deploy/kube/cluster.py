"""KubeCluster: a scheduler and workers as Pods of a Kubernetes cluster, started from a notebook.

It fits the Cluster base as SSHCluster does: the base keeps the books (scale, adapt, replacing a
worker that ends, close); this kind creates and deletes Kubernetes objects (see ``objects.py``)
and watches their Pods by listing them, by label, every ``poll_interval`` seconds on one
thread. A worker is started once its Pod passes its readiness probe (its worker listens);
a worker Pod that ends by itself is replaced while the scheduler runs.

What removes the cluster: ``close()`` deletes every object labelled with this cluster's id;
when the notebook runs in a Pod (JupyterHub on Kubernetes), that Pod owns the scheduler's Job,
which owns everything else, so Kubernetes garbage-collects the cluster with the notebook's Pod;
and the scheduler exits once no client has been connected for ``idle_timeout`` (this object
keeps one connected while it lives), its Job finishes and is deleted with what it owns
``objects.JOB_TTL`` seconds later. That covers a kernel that died anywhere.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...durations import parse_duration
from ...errors import ClusterError
from .. import at_exit
from ..cluster import Cluster, WorkerSpec
from . import objects as o
from .api import (KubeApi, default_namespace, in_cluster, notebook_owner, pod_state,
                  status_code, to_model, worker_address, wrap)
from .portforward import PortForward

logger = logging.getLogger("nbcluster.deploy.kube")



class _Pod:
    """A Pod this cluster created (a worker's handle, or the scheduler's) and what the last
    look at it said."""

    def __init__(self, name: str | None, role: str) -> None:
        self.name = name            # the scheduler's is known once its Job made it
        self.role = role
        self.address = ""
        self.detail = "not created yet"
        self.seen = False           # listed at least once: missing later means deleted
        self.ready = False
        self.error: str | None = None
        self.ended = False
        self.stopping = False       # asked to go: its end is no news
        self.settled = threading.Event()   # ready, or will never be

    def __repr__(self) -> str:
        return f"<{self.role} pod {self.name} {self.address or self.detail}>"


class KubeCluster(Cluster):
    """A scheduler Pod (with a Service) and ``n_workers`` worker Pods in ``namespace``.

    ``image``: an image with nbcluster installed, the same Python and libraries as the
    notebook (default: ``JUPYTER_IMAGE_SPEC``, the notebook's own image on JupyterHub).
    ``namespace``: default the notebook Pod's own, else the kubeconfig context's.
    ``resources``: each worker container's ``{"requests": {...}, "limits": {...}}``; a memory
    limit becomes the worker's ``memory_limit``, the CPU limit (else request) its threads.
    ``env``: extra environment variables for the scheduler and workers.
    ``name``: the cluster's name (its Service, so the scheduler is ``NAME.NAMESPACE.svc``);
    default ``nbcluster-`` and a random suffix. ``idle_timeout``: the scheduler exits after
    this long with no client connected (None: never). ``port_forward``: reach the scheduler
    through ``kubectl port-forward`` (default: when the notebook is not in the cluster).
    ``api``: a ``kubernetes.client.ApiClient`` (default: the in-cluster service account, else
    ``KUBECONFIG``), or any object with ``core`` and ``batch`` APIs (tests pass a fake).
    ``timeout``: seconds each Pod has to become ready (image pulls, node scale-up).
    """

    def __init__(self, image: str | None = None, namespace: str | None = None,
                 n_workers: int = 1, resources: dict | None = None, env: dict | None = None, *,
                 name: str | None = None, threads_per_worker: int | None = None,
                 memory_limit: int | str | None = None, queues=None,
                 scheduler_resources: dict | None = None, idle_timeout: Any = "10m",
                 port_forward: bool | None = None, kubectl: str = "kubectl",
                 image_pull_policy: str | None = None, token: str | None = None,
                 api: Any = None, timeout: float = 120.0, close_timeout: float = 5.0,
                 poll_interval: float = 1.0) -> None:
        self.closed = True   # until started: __del__ and close have nothing to do
        image = image or os.environ.get("JUPYTER_IMAGE_SPEC") or os.environ.get("JUPYTER_IMAGE")
        if not isinstance(image, str) or not image.strip():
            raise ValueError("KubeCluster needs image=: an image with nbcluster installed (the "
                             "same Python and libraries as this notebook), e.g. "
                             "image='registry.example/me/nbcluster:0.1'")
        if image_pull_policy not in (None, "Always", "IfNotPresent", "Never"):
            raise ValueError(f"image_pull_policy must be Always, IfNotPresent or Never, got "
                             f"{image_pull_policy!r}")
        self.image = image.strip()
        self.resources = o.check_resources(resources)
        self.scheduler_resources = o.check_resources(scheduler_resources)
        self.env = o.check_env(env)
        self.idle_timeout = None if idle_timeout is None else \
            parse_duration(idle_timeout, "idle_timeout")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive (or None), got {idle_timeout!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.cluster_id = uuid.uuid4().hex[:12]
        self.name = o.check_name(name) if name is not None else f"nbcluster-{self.cluster_id[:6]}"
        inside = in_cluster()
        self._api: KubeApi = wrap(api) if api is not None else KubeApi.connect(inside)
        self.namespace = namespace or default_namespace(inside)
        self.port_forward = (not inside) if port_forward is None else bool(port_forward)
        self._kubectl = kubectl
        self._pull = image_pull_policy
        self.poll_interval = poll_interval
        limit = o.memory_bytes(self.resources)
        super().__init__(
            threads_per_worker=threads_per_worker or o.cpu_threads(self.resources),
            memory_limit=memory_limit if memory_limit is not None else (limit or "auto"),
            queues=queues, token=token, timeout=timeout, close_timeout=close_timeout)
        self.owned_by = "nothing yet"       # what garbage-collects the cluster
        self._owners: list[dict] = []       # the Job, once created
        self._pods: dict[str, _Pod] = {}    # workers by Pod name
        self._pods_lock = threading.Lock()
        self._scheduler = _Pod(None, "scheduler")
        self._created: list[tuple[str, str]] = []   # (kind, name) of the named objects
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self._forward: PortForward | None = None
        self._keepalive: Any = None
        self._n_initial = n_workers
        at_exit.OPEN.add(self)
        self._start(n_workers)

    @property
    def kind(self) -> str:
        return f"kubernetes {self.namespace}/{self.name}"

    # ------------------------------------------------------------------ creating objects
    def _create(self, kind: str, body: dict) -> Any:
        """Create one object (checked through the client's model), remembered for close()."""
        name, ns = body["metadata"]["name"], self.namespace
        core, batch = self._api.core, self._api.batch
        create = {"Secret": (core.create_namespaced_secret, "V1Secret"),
                  "Service": (core.create_namespaced_service, "V1Service"),
                  "Pod": (core.create_namespaced_pod, "V1Pod"),
                  "Job": (batch.create_namespaced_job, "V1Job")}[kind]
        try:
            made = create[0](ns, to_model(body, create[1]))
        except Exception as e:
            raise self._api_error(f"create the {kind} {name}", e) from None
        if kind != "Pod":
            self._created.append((kind, name))
        return made

    def _api_error(self, what: str, e: BaseException) -> ClusterError:
        code = status_code(e)
        if code == 409:
            hint = (f"an object of that name exists already: choose another name= or delete "
                    f"the old cluster: kubectl delete -n {self.namespace} job,pod,service,secret"
                    f" -l {o.LABEL_CLUSTER}={self.name}")
        elif code == 403:
            hint = (f"the account in use may not do that in namespace {self.namespace}; "
                    "kubernetes/rbac.yaml lists the permissions KubeCluster needs")
        else:
            hint = getattr(e, "reason", None) or str(e)
        return ClusterError(f"KubeCluster: cannot {what}"
                            f"{f' (HTTP {code})' if code else ''}: {hint}")

    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        owner, self.owned_by = notebook_owner(self._api, self.namespace)
        ns, name, cid = self.namespace, self.name, self.cluster_id
        # the Secret before the Job, so the scheduler never starts without its token
        self._create("Secret", o.token_secret(name, ns, cid, self.token, [owner] if owner else []))
        job = self._create("Job", o.scheduler_job(
            name, ns, cid, self.image, self.env, self.scheduler_resources, self.idle_timeout,
            [owner] if owner else [], self._pull))
        self._owners = [o.owner_reference("batch/v1", "Job", job.metadata.name, job.metadata.uid)]
        try:
            self._api.core.patch_namespaced_secret(f"{name}-token", ns,
                                                   {"metadata": {"ownerReferences": self._owners}})
        except Exception as e:
            raise self._api_error(f"make the Job own the Secret {name}-token", e) from None
        self._create("Service", o.scheduler_service(name, ns, cid, self._owners))
        if owner is None:
            self.owned_by = f"not owned ({self.owned_by}): the scheduler exits when idle"
        self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                        name=f"nbcluster-kube-{name}")
        self._poller.start()
        self._wait_settled(self._scheduler, time.monotonic() + self.timeout)
        if not self._scheduler.ready:
            raise ClusterError(f"KubeCluster: the scheduler pod {self._scheduler.name or '(none yet)'}"
                               f" did not start: {self._scheduler.error or self._scheduler.detail}"
                               f"{self._logs_hint(self._scheduler)}")
        token = self._dashboard_token()
        if self.port_forward:
            self._forward = PortForward(ns, f"pod/{self._scheduler.name}",
                                        [o.SCHEDULER_PORT, o.DASHBOARD_PORT], self._kubectl,
                                        self.timeout)
            local = self._forward.start()
            host, ports = "127.0.0.1", (local[o.SCHEDULER_PORT], local[o.DASHBOARD_PORT])
        else:
            host, ports = o.service_host(name, ns), (o.SCHEDULER_PORT, o.DASHBOARD_PORT)
        self.scheduler_address = f"tcp://{host}:{ports[0]}"
        if token is not None:
            self._dashboard_link = f"http://{host}:{ports[1]}/status?token={token}"
        self._connect()

    def _connect(self) -> None:
        """Keep a client connected, so the scheduler's idle timeout counts from this object's
        end; a first connection also proves the address works from here."""
        from ...client import Client

        try:
            self._keepalive = Client(self.scheduler_address, token=self.token, timeout=10,
                                     set_as_default=False)
        except Exception as e:
            raise ClusterError(f"KubeCluster: the scheduler pod runs, but "
                               f"{self.scheduler_address} cannot be reached from here: {e}. "
                               + ("Is the notebook in the cluster? If not, pass "
                                  "port_forward=True." if not self.port_forward else "")) from None

    def _dashboard_token(self) -> str | None:
        """The dashboard's token, from the scheduler's log (it prints its start-up lines)."""
        deadline = time.monotonic() + min(self.timeout, 30.0)
        while True:
            text = self._pod_log(self._scheduler.name or "", 50)
            if text.startswith("(no log"):   # not allowed to read it: no link then
                logger.warning("KubeCluster %s: no dashboard link: %s", self.name, text)
                return None
            for line in text.splitlines():
                if line.startswith("dashboard at "):
                    query = parse_qs(urlsplit(line.split()[-1]).query)
                    tokens = query.get("token")
                    return tokens[0] if tokens else None
                if line.startswith(("no dashboard", "connection file")):
                    return None
            if time.monotonic() > deadline or self._stop_polling.wait(0.2):
                return None

    # ------------------------------------------------------------------ watching
    def _poll_loop(self) -> None:
        failures = 0
        while True:
            try:
                self._poll()
                failures = 0
            except Exception as e:
                failures += 1
                (logger.warning if failures == 3 else logger.debug)(
                    "KubeCluster %s: listing its pods failed: %s", self.name, e)
            if self._stop_polling.wait(self.poll_interval):
                return

    def _poll(self) -> None:
        pods = self._api.core.list_namespaced_pod(
            self.namespace, label_selector=o.selector(self.cluster_id)).items
        by_name = {p.metadata.name: p for p in pods}
        if self._scheduler.name is None:
            self._scheduler.name = next(
                (p.metadata.name for p in pods
                 if (p.metadata.labels or {}).get(o.LABEL_COMPONENT) == "scheduler"), None)
        with self._pods_lock:
            tracked = [self._scheduler, *self._pods.values()]
        for pod in tracked:   # the scheduler first: workers that end with it are not replaced
            if pod.name is not None:
                self._update(pod, by_name.get(pod.name))
        keepalive = self._keepalive
        if keepalive is not None and keepalive.status == "disconnected" \
                and not self._scheduler.ended and not self.closed:
            self._reconnect()

    def _reconnect(self) -> None:
        old = self._keepalive
        try:
            self._connect()
        except ClusterError as e:
            logger.debug("KubeCluster %s: reconnecting failed: %s", self.name, e)
            return
        try:
            old.close()
        except Exception:
            pass

    def _update(self, pod: _Pod, model: Any) -> None:
        if model is None:
            if not pod.seen or pod.ended:
                return
            state, detail = "ended", "was deleted"
        else:
            pod.seen = True
            state, detail = pod_state(model)
        pod.detail = detail
        if not pod.settled.is_set():
            if state == "ready":
                pod.address = worker_address(detail) if pod.role == "worker" else detail
                pod.ready = True
                pod.settled.set()
            elif state in ("stuck", "ended"):
                pod.error, pod.ended = detail, state == "ended"
                pod.settled.set()
            return
        if state == "ended" and not pod.ended:
            pod.ended = True
            if pod.role == "worker" and not pod.stopping:
                self._worker_exited(pod, f"(pod {pod.name}) {detail}")

    def _wait_settled(self, pod: _Pod, deadline: float) -> None:
        pod.settled.wait(max(0.0, deadline - time.monotonic()))

    def _scheduler_lost(self) -> str | None:
        if self._scheduler.ended and self._scheduler.ready:
            return f"the scheduler pod {self._scheduler.name} {self._scheduler.detail}"
        return None

    # ------------------------------------------------------------------ workers
    def _name_for(self, host: Any) -> str:
        return f"{self.name}-worker-{next(self._names)}"

    def _host_memory(self, host: Any, n: int) -> int | None:
        return None   # each Pod has its own memory: no sharing among workers

    def _default_maximum(self) -> int:
        return max(1, self._n_initial, len(self._running))

    def _start_workers(self, specs: list[WorkerSpec], timeout: float) -> list:
        deadline = time.monotonic() + timeout
        started: list = []
        for spec in specs:   # all created first: they start in parallel
            pod = _Pod(spec.name, "worker")
            with self._pods_lock:
                self._pods[spec.name] = pod
            try:
                self._create("Pod", o.worker_pod(
                    self.name, self.namespace, self.cluster_id, spec.name, self.image, self.env,
                    self.resources, self.threads_per_worker, spec.memory_limit, spec.queues,
                    self._owners, self._pull))
                started.append(pod)
            except ClusterError as e:
                with self._pods_lock:
                    self._pods.pop(spec.name, None)
                started.append(e)
        results: list = []
        for pod in started:
            if isinstance(pod, BaseException):
                results.append(pod)
                continue
            self._wait_settled(pod, deadline)
            if pod.ready:
                results.append(pod)
                continue
            why = pod.error or f"not ready within {timeout:g} s (last seen: {pod.detail})"
            hint = self._logs_hint(pod) if pod.error else ""
            self._delete_pods([pod], 0)
            results.append(ClusterError(f"KubeCluster: worker pod {pod.name} did not start: "
                                        f"{why}{hint}"))
        return results

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> _Pod:
        result = self._start_workers([spec], timeout)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _stop_workers(self, handles: list, grace: float) -> None:
        self._delete_pods(handles, grace)

    def _stop_worker(self, handle: Any, grace: float) -> None:
        self._delete_pods([handle], grace)

    def _delete_pods(self, pods: list[_Pod], grace: float) -> None:
        for pod in pods:
            pod.stopping = True
            with self._pods_lock:
                self._pods.pop(pod.name or "", None)
            try:   # an ended one too: its record goes, its name is free
                self._api.core.delete_namespaced_pod(pod.name, self.namespace,
                                                     grace_period_seconds=math.ceil(grace))
            except Exception as e:
                if status_code(e) != 404:
                    logger.warning("KubeCluster %s: deleting pod %s failed: %s", self.name,
                                   pod.name, e)

    def _abort_starts(self) -> None:
        with self._pods_lock:
            pending = [p for p in [self._scheduler, *self._pods.values()]
                       if not p.settled.is_set()]
        for pod in pending:
            pod.error = "the cluster was closed"
            pod.settled.set()

    # ------------------------------------------------------------------ closing
    def _stop_scheduler(self) -> None:
        pass   # _shutdown deletes it with everything else

    def _shutdown(self, handles: list) -> None:
        at_exit.OPEN.discard(self)
        self._stop_polling.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(30)
        for closing in (self._keepalive, self._forward):
            if closing is not None:
                try:
                    closing.close() if closing is self._keepalive else closing.stop()
                except Exception as e:
                    logger.debug("KubeCluster %s: %s", self.name, e)
        with self._pods_lock:
            rest = list(self._pods.values())
        self._delete_pods(list(handles) + rest, self.close_timeout)
        ns, failed = self.namespace, []
        core, batch = self._api.core, self._api.batch
        deletes = {"Job": lambda n: batch.delete_namespaced_job(
                       n, ns, propagation_policy="Background"),   # its Pod and what it owns
                   "Service": lambda n: core.delete_namespaced_service(n, ns),
                   "Secret": lambda n: core.delete_namespaced_secret(n, ns)}
        for kind, name in reversed(self._created):
            try:
                deletes[kind](name)
            except Exception as e:
                if status_code(e) != 404:
                    failed.append(f"{kind} {name}: {e}")
        try:   # whatever is left with our label (a worker created as close began)
            core.delete_collection_namespaced_pod(ns, label_selector=o.selector(self.cluster_id))
        except Exception as e:
            if status_code(e) != 404:
                failed.append(f"pods: {e}")
        if failed:
            logger.warning("KubeCluster %s: could not delete %s; delete them with: kubectl "
                           "delete -n %s job,pod,service,secret -l %s", self.name,
                           "; ".join(failed), ns, o.selector(self.cluster_id))

    # ------------------------------------------------------------------ public
    def _pod_log(self, pod_name: str, tail: int | None = None) -> str:
        if not pod_name:
            return ""
        try:
            text = self._api.core.read_namespaced_pod_log(pod_name, self.namespace,
                                                          tail_lines=tail)
        except Exception as e:
            return f"(no log: {getattr(e, 'reason', None) or e})"
        return text if isinstance(text, str) else str(text)

    def _logs_hint(self, pod: _Pod) -> str:
        text = self._pod_log(pod.name or "", 20).strip()
        return "; its last log lines:\n    " + "\n    ".join(text.splitlines()) if text else ""

    def get_logs(self, tail: int | None = 100) -> dict[str, str]:
        """The last ``tail`` lines (None: all) of the scheduler's and each worker's log."""
        with self._pods_lock:
            names = [p.name for p in [self._scheduler, *self._pods.values()] if p.name]
        return {name: self._pod_log(name, tail) for name in names}

    def pods(self) -> list[dict]:
        """Role, Pod name and address of the scheduler and of every running worker."""
        pods = [self._scheduler, *(e.handle for e in list(self._running))]
        return [{"role": p.role, "pod": p.name, "address": p.address or None} for p in pods]
