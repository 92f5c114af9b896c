"""Cluster: what every kind of cluster shares (LocalCluster, SSHCluster, the batch-system and
Kubernetes clusters to come).

A cluster is one scheduler and a changing set of workers. The base keeps the books: which
workers run and what each was started as (a :class:`WorkerSpec`), ``scale``, ``add_worker``,
``retire_worker``, ``adapt``, ``restart_workers``, the replacement of workers that die, the
division of a machine's memory among the workers on it (``memory_limit="auto"``), ``close``
and the notebook's view. A kind only starts and stops things, through these hooks:

required
    ``_start_scheduler(first)``  start the scheduler; set ``scheduler_address`` (and
                                 ``_dashboard_link``). ``first``: the specs of the workers
                                 started next, so a kind may begin starting them meanwhile.
    ``_start_worker(spec, timeout)``  start one worker as ``spec`` says and return, once it
                                 serves, a handle: any object with its ``address``. Raise if it
                                 does not start (having stopped what was started).
    ``_stop_worker(handle, grace)``   stop it (terminate; kill after ``grace`` seconds) and free
                                 what it held. Also called for a worker that died by itself.
    ``_stop_scheduler()``        stop the scheduler and free the rest (the workers are gone).
optional
    ``_start_workers(specs, timeout)`` / ``_stop_workers(handles, grace)``  several at once
                                 (default: one thread each).
    ``_new_specs(n, queues)``    what ``n`` more workers start as, e.g. on which host (default:
                                 ``spec.host`` None, the kind decides).
    ``_name_for(host)``          a new worker's name.
    ``_host_memory(host, n)``    bytes of memory the ``n`` workers on ``host`` share (default:
                                 this machine's); None: unknown, each takes its machine's own.
    ``_set_memory_limits(changes)``  tell running workers a new limit; return those told
                                 (default: none can be, they keep theirs).
    ``_abort_starts()``          on close: give up the starts under way.
    ``_shutdown(handles)``       on close: stop these workers and the scheduler.
    ``_default_maximum()``       ``adapt``'s maximum when none is given.
    ``_adapt_to(wanted, retire, stop)``  adaptive scaling's decision carried out the kind's
                                 way (default: ``add_worker``/``retire_worker``, by Adaptive).
    ``_scheduler_lost()``        why the scheduler is gone (it died), or None while it runs:
                                 workers that exit then are not replaced (default: None).
    ``kind``                     what the notebook shows: "processes", "in-process", "ssh"...

A kind calls ``self._worker_exited(handle, why)`` (from any thread) when a worker ends without
having been asked to: the base starts a replacement from the same spec while the cluster is
open and its scheduler runs (workers exit with their scheduler: no replacement could join).
A kind's ``__init__`` sets itself up, then calls ``self._start(n_workers)``.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import logging
import threading
from collections import Counter
from typing import Any, Sequence

from ..config import parse_memory_limit, parse_resources
from ..dashboard.links import register_remote, through_jupyter, unregister_remote
from ..errors import ClusterError
from .adaptive import Adaptive

START_TIMEOUT = 30.0      # seconds a worker (or scheduler) has to start
CLOSE_TIMEOUT = 5.0       # seconds a worker has to stop before it is killed
RETIRE_TIMEOUT = 60.0     # seconds a retiring worker has to finish and hand its results on
RESTART_GRACE = 2.0       # the same on restart: a worker stuck in a task is killed sooner
REPLACE_ATTEMPTS = 5


@dataclasses.dataclass
class WorkerSpec:
    """What one worker is started as. ``host``: where it runs (a host of SSHCluster; None for
    this machine or wherever the kind decides); ``memory_limit``: bytes, None for no limit, or
    "auto" for the whole memory of the machine it lands on; ``options``: the kind's own."""

    name: str
    host: Any = None
    queues: list[str] | None = None
    memory_limit: int | str | None = None
    options: dict = dataclasses.field(default_factory=dict)
    resources: dict[str, float] | None = None    # what it has, e.g. {"GPU": 1}


@dataclasses.dataclass(eq=False)
class RunningWorker:
    """A started worker: its spec and the kind's handle on it."""

    spec: WorkerSpec
    handle: Any

    @property
    def address(self) -> str:
        return self.handle.address


def check_queues(queues) -> list[str] | None:
    """Queue names from a list or ``"a,b"``; None: the default queue."""
    if queues is None:
        return None
    if isinstance(queues, str):
        queues = queues.split(",")
    from ..client.options import check_queue_name

    names = [check_queue_name(q.strip(), "queues") for q in queues]
    if not names:
        raise ValueError("queues must name at least one queue")
    return names


class Cluster:
    """A scheduler and workers that this process started; see the module's docstring for
    what a kind implements. ``memory_limit``: "auto" (each machine's memory divided among the
    workers on it, re-divided when their number changes), bytes or text such as "4GB" (each
    worker's), or None (no limit)."""

    @property
    def kind(self) -> str:
        """What the notebook shows: "processes", "in-process", "ssh"..."""
        return "cluster"

    def __init__(self, *, threads_per_worker: int = 1, memory_limit: int | str | None = "auto",
                 queues=None, token: str | None = None, security=None, resources=None,
                 timeout: float = START_TIMEOUT, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.closed = True       # until _start: close and __del__ have nothing to do
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be a positive int, got {threads_per_worker!r}")
        from ..comm.auth import new_token

        self.threads_per_worker = threads_per_worker
        self._memory_auto = isinstance(memory_limit, str) and memory_limit.strip().lower() == "auto"
        self._memory_fixed = None if self._memory_auto else parse_memory_limit(memory_limit)
        self.queues, self.worker_resources = check_queues(queues), parse_resources(resources)
        self.token = token or new_token()
        self.security = security
        self.timeout, self.close_timeout = timeout, close_timeout
        self.scheduler_address: str | None = None
        self._dashboard_link: str | None = None
        self._remote_dashboard: str | None = None  # its name, if registered for Jupyter's proxy
        self.restarts = 0                          # workers replaced after they died
        self._running: list[RunningWorker] = []    # in start order
        self._early_exits: list[tuple] = []        # (handle, why, replace, details)
        self._replacing: set[threading.Thread] = set()
        self._lock = threading.Lock()              # the books above and ``closed``
        self._scaling = threading.RLock()          # one change of the workers at a time
        self._names = itertools.count()
        self._adaptive: Adaptive | None = None
        self._lost: str | None = None              # why the scheduler is gone, once seen
        self._log = logging.getLogger(type(self).__module__)

    # ------------------------------------------------------------------ hooks
    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        raise NotImplementedError

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> Any:
        raise NotImplementedError

    def _stop_worker(self, handle: Any, grace: float) -> None:
        raise NotImplementedError

    def _stop_scheduler(self) -> None:
        raise NotImplementedError

    def _start_workers(self, specs: list[WorkerSpec], timeout: float) -> list:
        """A handle, or the exception raised, for each spec in order."""
        results: list = [None] * len(specs)

        def start(i: int) -> None:
            try:
                results[i] = self._start_worker(specs[i], timeout)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                results[i] = e
        _each_on_a_thread(start, len(specs), "start")
        return results

    def _stop_workers(self, handles: list, grace: float) -> None:
        def stop(i: int) -> None:
            try:
                self._stop_worker(handles[i], grace)
            except Exception:
                self._log.warning("stopping worker %r failed", handles[i], exc_info=True)
        _each_on_a_thread(stop, len(handles), "stop")

    def _new_specs(self, n: int, queues: list[str] | None) -> list[WorkerSpec]:
        return [self._spec(None, queues) for _ in range(n)]

    def _name_for(self, host: Any) -> str:
        return f"worker-{next(self._names)}"

    def _host_memory(self, host: Any, n: int) -> int | None:
        return parse_memory_limit("auto")

    def _set_memory_limits(self, changes: list[tuple[Any, int]]) -> list:
        return []

    def _abort_starts(self) -> None:
        pass

    def _shutdown(self, handles: list) -> None:
        try:
            self._stop_workers(handles, self.close_timeout)
        finally:
            self._stop_scheduler()

    def _default_maximum(self) -> int:
        return max(1, len(self._running))

    def _scheduler_lost(self) -> str | None:
        return None

    # ------------------------------------------------------------------ starting
    def _start(self, n_workers: int) -> None:
        """Start the scheduler and ``n_workers`` workers (the end of a kind's ``__init__``);
        if anything fails, stop what started and raise."""
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, got {n_workers!r}")
        self.closed = False
        try:
            specs = self._new_specs(n_workers, None)
            self._share_memory(specs)
            self._start_scheduler(specs)
            self._remote_dashboard = register_remote(self._dashboard_link, self.scheduler_address)
            self._start_specs(specs, self.timeout)
        except BaseException:
            self.close()
            raise

    def _spec(self, host: Any, queues: list[str] | None, **options) -> WorkerSpec:
        return WorkerSpec(self._name_for(host), host, queues or self.queues, None, options,
                          self.worker_resources)

    def _respec(self, spec: WorkerSpec) -> WorkerSpec:
        """The spec of a worker that takes ``spec``'s place: the same but its name."""
        return dataclasses.replace(spec, name=self._name_for(spec.host),
                                   options=dict(spec.options))

    def _start_specs(self, specs: list[WorkerSpec], timeout: float) -> list[str]:
        """Start and count these workers; the addresses of those that started. Raises the
        first failure (after counting the others)."""
        if not specs:
            return []
        results = self._start_workers(specs, timeout)
        errors = [r for r in results if isinstance(r, BaseException)]
        addresses = [r.address for spec, r in zip(specs, results)
                     if not isinstance(r, BaseException) and self._count(spec, r)]
        if errors:
            raise errors[0]
        return addresses

    def _count(self, spec: WorkerSpec, handle: Any) -> bool:
        entry = RunningWorker(spec, handle)
        with self._lock:
            closed = self.closed
            early = next((x for x in self._early_exits if x[0] is handle), None)
            if early is not None:
                self._early_exits.remove(early)
            elif not closed:
                self._running.append(entry)
                return True
        if closed:
            self._quietly_stop(handle, self.close_timeout)
        elif early is not None:   # it ended before it was counted: as if it ended now
            self._replace_soon(entry, *early[1:])
        return False

    def _quietly_stop(self, handle: Any, grace: float) -> None:
        try:
            self._stop_workers([handle], grace)
        except Exception:
            self._log.debug("stopping %r failed", handle, exc_info=True)

    # ------------------------------------------------------------------ memory
    def _share_memory(self, new: Sequence[WorkerSpec] = ()) -> None:
        """Give the ``new`` specs their memory limit. With "auto": each host's memory divided
        among the workers there and those about to start; running workers whose share
        changed are told (if the kind can)."""
        if not self._memory_auto:
            for spec in new:
                spec.memory_limit = self._memory_fixed
            return
        with self._lock:
            running = list(self._running)
        counts = Counter(e.spec.host for e in running) + Counter(s.host for s in new)
        shares = {}
        for host, n in counts.items():
            total = self._host_memory(host, n)
            shares[host] = "auto" if total is None else max(1, total // n)
        for spec in new:
            spec.memory_limit = shares[spec.host]
        changes = [(e, share) for e in running
                   if isinstance(share := shares[e.spec.host], int)
                   and e.spec.memory_limit != share]
        if changes:
            told = {id(h) for h in self._set_memory_limits([(e.handle, n) for e, n in changes])}
            for e, limit in changes:
                if id(e.handle) in told:
                    e.spec.memory_limit = limit

    # ------------------------------------------------------------------ dying
    def _worker_exited(self, handle: Any, why: str, replace: bool = True,
                       details: str = "") -> None:
        """Called by the kind, from any thread, when a worker ended by itself."""
        with self._lock:
            if self.closed:
                return
            entry = next((e for e in self._running if e.handle is handle), None)
            if entry is None:     # not counted yet: _count takes it from here
                self._early_exits.append((handle, why, replace, details))
                return
            self._running.remove(entry)
        self._replace_soon(entry, why, replace, details)

    def _replace_soon(self, dead: RunningWorker, why: str, replace: bool, details: str) -> None:
        if self._scheduler_gone() is not None:   # it went with its scheduler: said once
            replace = False
            self._log.debug("worker %s %s%s", dead.spec.name, why, details)
        else:
            self._log.warning("%s: worker %s %s%s%s", type(self).__name__, dead.spec.name, why,
                              "; starting a replacement" if replace else "", details)
        thread = threading.Thread(target=self._replace, args=(dead, replace), daemon=True,
                                  name=f"nbcluster-replace-{dead.spec.name}")
        with self._lock:   # started before close() can see it: it joins what it sees
            self._replacing.add(thread)
            thread.start()

    def _replace(self, dead: RunningWorker, replace: bool) -> None:
        try:
            self._quietly_stop(dead.handle, self.close_timeout)   # what it held (pipes, SSH)
            if not replace:
                return
            with self._scaling:
                for _ in range(REPLACE_ATTEMPTS):
                    # the new worker may be handed the task that killed the last one and die
                    # too before it is ready: try again (the scheduler stops that task after 3)
                    if self.closed or self._scheduler_gone() is not None:
                        return
                    try:
                        started = self._grow([self._respec(dead.spec)], self.timeout)
                    except Exception as e:
                        if self.closed or self._scheduler_gone() is not None:
                            return
                        self._log.warning("%s: replacing worker %s failed: %s",
                                          type(self).__name__, dead.spec.name, e)
                        continue
                    if started:   # (one that died at once has a replacement coming)
                        with self._lock:
                            self.restarts += 1
                    return
                self._log.error("%s: could not replace worker %s after %d attempts",
                                type(self).__name__, dead.spec.name, REPLACE_ATTEMPTS)
        finally:
            with self._lock:
                self._replacing.discard(threading.current_thread())

    # ------------------------------------------------------------------ scaling
    def _grow(self, specs: list[WorkerSpec], timeout: float) -> list[str]:
        self._share_memory(specs)      # the running workers take the smaller share first
        return self._start_specs(specs, timeout)

    def _retire(self, entries: list[RunningWorker], timeout: float | None = None) -> None:
        """Retire gracefully (see ``retire_workers``), then stop the processes; out of the
        books first, so that their exits are not taken for deaths."""
        with self._lock:
            for e in entries:
                self._running.remove(e)
        self._hand_over([e.address for e in entries],
                        RETIRE_TIMEOUT if timeout is None else timeout)
        self._stop_workers([e.handle for e in entries], self.close_timeout)

    def _hand_over(self, addresses: list[str], timeout: float) -> None:
        """Have the scheduler move the work and results of ``addresses`` to the others and
        let them go; a failure is logged and the workers are stopped anyway."""
        from ..client import Client

        if not addresses or self.scheduler_address is None or self._lost is not None:
            return
        try:
            with Client(self.scheduler_address, token=self.token, security=self.security,
                        set_as_default=False) as client:
                known = set(client.scheduler_info()["workers"])
                addresses = [a for a in addresses if a in known]
                if addresses:
                    client.retire_workers(addresses, timeout=timeout)
        except Exception as e:
            self._log.warning("workers %s were stopped without handing over their results "
                              "(%s); what only they held is recomputed if needed",
                              ", ".join(addresses), e)

    def retire_workers(self, workers: list[str] | None = None,
                       timeout: float | None = None) -> list[str]:
        """Retire ``workers`` (addresses or names; None: all) gracefully and do not replace
        them: no new work goes to them, what is queued there moves, what runs there finishes,
        and the results only they hold are copied to the others before they stop (at most
        ``timeout`` seconds, default 60). Returns their addresses."""
        self._check_open()
        with self._scaling:
            running = list(self._running)
            if workers is None:
                entries = running
            else:
                entries = [e for e in running if e.address in workers or e.spec.name in workers]
                found = {e.address for e in entries} | {e.spec.name for e in entries}
                unknown = [w for w in workers if w not in found]
                if unknown:
                    raise ValueError(f"no worker {', '.join(map(repr, unknown))} in this "
                                     f"cluster (it has {', '.join(e.address for e in running)})")
            self._retire(entries, timeout)
            self._share_memory()
        return [e.address for e in entries]

    @property
    def workers(self) -> list[str]:
        """The addresses of the running workers, oldest first."""
        return [e.address for e in list(self._running)]

    def scale(self, n: int) -> None:
        """Start or stop workers until there are ``n`` (the newest go first); stops adapting.
        With ``memory_limit="auto"`` the limits are re-divided."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"scale needs a non-negative int, got {n!r}")
        self._check_open()
        self.stop_adaptive()
        with self._scaling:
            current = list(self._running)
            if n > len(current):
                self._grow(self._new_specs(n - len(current), None), self.timeout)
            elif n < len(current):
                self._retire(current[n:])
            self._share_memory()

    def add_worker(self, queues: list[str] | None = None) -> str:
        """Start one more worker (subscribed to ``queues``, default: the cluster's)."""
        self._check_open()
        queues = check_queues(queues)
        with self._scaling:
            return self._add_one(self._new_specs(1, queues)[0])

    def _add_one(self, spec: WorkerSpec) -> str:
        started = self._grow([spec], self.timeout)
        if not started:
            raise ClusterError(f"worker {spec.name} ended as soon as it started; a replacement "
                               "is starting")
        return started[0]

    def retire_worker(self, address: str | None = None) -> None:
        """Stop the worker at ``address`` (default: the newest)."""
        self._check_open()
        with self._scaling:
            entry = next((e for e in reversed(self._running) if address in (None, e.address)),
                         None)
            if entry is None:
                raise ValueError(f"no worker {address!r} in this cluster")
            self._retire([entry])
            self._share_memory()

    def restart_workers(self, timeout: float | None = None) -> None:
        """Replace every worker by a new one started the same way (what
        ``client.restart()`` calls): a worker stuck in a task is killed after 2 s."""
        self._check_open()
        with self._scaling:
            with self._lock:
                old, self._running = self._running, []
            self._stop_workers([e.handle for e in old], RESTART_GRACE)
            self._grow([self._respec(e.spec) for e in old], timeout or self.timeout)

    def adapt(self, minimum: int = 0, maximum: int | None = None, interval: float = 1.0,
              wait_count: int = 3) -> Adaptive:
        """Grow while work waits, retire workers idle (running nothing, holding nothing) for
        ``wait_count`` checks. ``scale()``, ``stop_adaptive()`` or the returned object's
        ``stop()`` end it (see ``deploy/adaptive.py``)."""
        self._check_open()
        self.stop_adaptive()
        self._adaptive = Adaptive(self, minimum,
                                  self._default_maximum() if maximum is None else maximum,
                                  interval, wait_count)
        return self._adaptive

    def stop_adaptive(self) -> None:
        adaptive, self._adaptive = self._adaptive, None
        if adaptive is not None:
            adaptive.stop()

    def wait_for_workers(self, n: int | None = None, timeout: float = 30.0) -> int:
        """Until the scheduler counts ``n`` workers (default: as many as run here; a worker
        registers just after it reports its address); returns how many it counts."""
        from ..client import Client

        with Client(self, set_as_default=False) as client:
            return client.wait_for_workers(len(self._running) if n is None else n,
                                           timeout=timeout)

    # ------------------------------------------------------------------ state, closing
    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's status page (None without one)."""
        return through_jupyter(self._dashboard_link, self._remote_dashboard)

    @property
    def status(self) -> str:
        """``"running"``, ``"failed"`` (the scheduler is gone: close the cluster and start a
        new one) or ``"closed"``."""
        if self.closed:
            return "closed"
        return "running" if self._scheduler_gone() is None else "failed"

    def _scheduler_gone(self) -> str | None:
        """Why the scheduler is gone, or None while it runs (or the cluster is closed). The
        first to notice says so in the log: once, however many workers exit with it."""
        if self._lost is not None or self.closed:
            return self._lost
        why = self._scheduler_lost()
        if why is None:
            return None
        with self._lock:
            first, self._lost = self._lost is None, why
        if first:
            self._log.error("%s: %s; its workers exit with it and are not replaced (close this "
                            "cluster and start a new one)", type(self).__name__, why)
        return why

    def _check_open(self) -> None:
        if self.closed:
            raise ClusterError(f"this {type(self).__name__} is closed")
        lost = self._scheduler_gone()
        if lost is not None:
            raise ClusterError(f"this {type(self).__name__} has no scheduler any more: {lost}; "
                               "close it and start a new one")

    def close(self) -> None:
        """Stop adapting, every worker, then the scheduler. Idempotent."""
        self.stop_adaptive()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            running, self._running = self._running, []
        try:
            self._abort_starts()
            with self._lock:
                replacing = [t for t in self._replacing if t is not threading.current_thread()]
            for thread in replacing:
                thread.join(self.timeout + self.close_timeout)
        finally:
            unregister_remote(self._remote_dashboard)
            self._shutdown([e.handle for e in running])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        status = self.status
        return (f"<{type(self).__name__} {self.scheduler_address or '?'} "
                f"workers={len(self._running)} threads={self.threads_per_worker} {self.kind}"
                f"{'' if status == 'running' else ' ' + status}"
                f"{': ' + self._lost if status == 'failed' and self._lost else ''}>")

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(e.spec.name)}</td><td>{esc(str(e.spec.host or ''))}</td>"
            f"<td><code>{esc(e.address)}</code></td><td>{esc(_memory_text(e.spec))}</td></tr>"
            for e in list(self._running))
        link = self.dashboard_link
        dash = (f"<br>Dashboard: <a href='{esc(link, quote=True)}' target='_blank'>"
                f"{esc(link)}</a>" if link else "")
        status = self.status
        if status == "failed":
            status = f"failed: {self._lost}"
        return (f"<div><b>{type(self).__name__}</b> ({esc(self.kind)})"
                f"{'' if status == 'running' else ' ' + esc(status)}<br>Scheduler: "
                f"<code>{esc(str(self.scheduler_address))}</code>{dash}<br>"
                f"Workers ({len(self._running)}, {self.threads_per_worker} threads each):"
                f"<table><tr><th>name</th><th>host</th><th>address</th><th>memory limit</th>"
                f"</tr>{rows}</table></div>")


def _memory_text(spec: WorkerSpec) -> str:
    limit = spec.memory_limit
    if isinstance(limit, int):
        return f"{limit / 2**30:.2f} GiB"
    return "none" if limit is None else str(limit)


def _each_on_a_thread(fn, n: int, what: str) -> None:
    """``fn(i)`` for i in range(n), each on a thread of its own (just called for one)."""
    if n == 1:
        fn(0)
        return
    threads = [threading.Thread(target=fn, args=(i,), name=f"nbcluster-{what}-{i}", daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
