"""LocalCluster: a scheduler and workers on this machine, as processes or in this process."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from ..config import MEMORY_EXIT_CODE, check_fraction, parse_memory_limit, parse_resources
from ..errors import ClusterError
from ..loop_thread import LoopThread
from .cluster import Cluster, WorkerSpec, check_queues

if TYPE_CHECKING:
    from ..dashboard.server import Dashboard
    from ..server.scheduler import Scheduler

logger = logging.getLogger("nbcluster.deploy.local")


def machine_size() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _WorkerProcess:
    """One worker process (``spawn.py``) and the thread that notices when it ends."""

    def __init__(self, cluster: "LocalCluster", spec: WorkerSpec, args: list[str]) -> None:
        self.cluster = cluster
        self.name = spec.name
        self.address = ""
        self.retired = False          # asked to go: its exit is no news
        self.address_sent = False
        self.proc = cluster._spawn("worker", *args)

    def send_address(self) -> None:
        """The scheduler's address, which the process waits for (it imports meanwhile)."""
        if not self.address_sent:
            address = self.cluster.scheduler_address
            assert address is not None, "the scheduler starts first"
            _stdin(self.proc).write(address.encode() + b"\n")
            _stdin(self.proc).flush()
            self.address_sent = True

    def tell_memory_limit(self, limit: int | None) -> bool:
        """Ask the process to take a new memory limit (see ``spawn.py``); False if it is gone."""
        try:
            _stdin(self.proc).write(f"MEMORY_LIMIT {limit or 'none'}\n".encode())
            _stdin(self.proc).flush()
            return True
        except (OSError, ValueError):   # exited (it will be replaced with the new limit)
            return False

    def wait_memory_limit(self, limit: int | None, deadline: float) -> None:
        """Until the process has applied its limit and told the scheduler (it echoes it)."""
        line = f"MEMORY_LIMIT {limit or 'none'}"
        if _read_line(self.proc, line, deadline) is None and self.proc.poll() is None:
            logger.warning("worker %s did not confirm its new memory limit", self.name)

    def wait_ready(self, deadline: float) -> None:
        self.address = _read_address(self.proc, f"worker {self.name}", deadline)
        threading.Thread(target=self._watch, name=f"nbcluster-watch-{self.name}",
                         daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        if not self.retired:
            why = "went over its memory limit" if code == MEMORY_EXIT_CODE else \
                f"exited with code {code}"
            self.cluster._worker_exited(self, f"({self.address}) {why}")

    def stop(self) -> None:
        self.retired = True
        try:
            _stdin(self.proc).close()   # the child exits when its stdin closes
        except OSError:
            pass

    def kill(self) -> None:
        self.retired = True
        if self.proc.poll() is None:
            self.proc.kill()


def _stdin(proc: subprocess.Popen) -> IO[Any]:
    """A child's stdin: ``_spawn`` gives each one a pipe."""
    assert proc.stdin is not None
    return proc.stdin


def _read_address(proc: subprocess.Popen, what: str, deadline: float,
                  extras: dict | None = None) -> str:
    """The address a child prints once it serves; ``extras`` collects its other notices."""
    result: list[str] = []

    def read():
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("ADDRESS ") or line.startswith("ERROR "):
                result.append(line)
                return
            if extras is not None and " " in line:
                word, rest = line.split(" ", 1)
                extras[word.lower()] = rest

    t = threading.Thread(target=read, name="nbcluster-read-address", daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    if not result:
        proc.kill()
        raise ClusterError(f"{what} did not start in time (exit code {proc.poll()})")
    if result[0].startswith("ERROR "):
        raise ClusterError(f"{what} failed to start: {result[0][6:]}")
    return result[0].split(" ", 1)[1]


def _read_line(proc: subprocess.Popen, wanted: str, deadline: float) -> str | None:
    """Read ``proc``'s stdout up to the line ``wanted`` (None: not by the deadline, or EOF)."""
    result: list[str] = []

    def read():
        for raw in proc.stdout:
            if raw.decode(errors="replace").strip() == wanted:
                result.append(wanted)
                return

    t = threading.Thread(target=read, name="nbcluster-read-worker", daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    return result[0] if result else None


async def _call(fn, *args) -> None:
    fn(*args)


def _close_pipes(proc: subprocess.Popen) -> None:
    for stream in (proc.stdout, proc.stdin):
        try:
            if stream is not None:
                stream.close()
        except Exception:
            pass


def start_inprocess_scheduler(name: str, address: str, token: str, security=None,
                              journal: str | None = None, dashboard_port: int = -1
                              ) -> tuple[LoopThread, "Scheduler", "Dashboard | None"]:
    """A Scheduler serving ``address`` on a new loop thread of this process, and its dashboard
    on 127.0.0.1 (``dashboard_port`` 0: a free port, -1: none). What LocalCluster
    (``processes=False``) and the batch-system clusters run their scheduler on."""
    from ..server.scheduler import Scheduler

    thread = LoopThread(name)
    try:
        scheduler: Scheduler = thread.run(Scheduler(address, token=token, security=security,
                                                    journal=journal).start())
    except BaseException:
        thread.stop()
        raise
    dashboard = None
    if dashboard_port >= 0:
        try:
            from ..dashboard.server import start_dashboard

            dashboard = start_dashboard(scheduler, port=dashboard_port, loop=thread.loop)
            scheduler.dashboard_link = dashboard.link
        except ImportError:
            logger.info("no dashboard: bokeh is not installed")
    return thread, scheduler, dashboard


class LocalCluster(Cluster):
    """A scheduler and ``n_workers`` workers on this machine.

    With ``processes=True`` (the default) each is its own process; LocalCluster replaces a
    worker process that dies. With ``processes=False`` everything runs in this process on a
    background thread, connected by an in-memory transport.

    ``memory_limit="auto"`` (the default) shares this machine's memory among the workers there
    are: each of n workers may use total / n, re-divided whenever the number changes
    (``scale``, ``add_worker``, ``retire_worker``, ``adapt``), so together they stay within the
    machine. A limit given as bytes or text (``"4GB"``) is each worker's, however many there
    are; ``None`` means no limit.

    ``resources`` (``{"GPU": 1}`` or ``"GPU=1"``) is what every worker has: tasks submitted
    with ``resources=`` run only where that much is free; ``add_worker(resources=...)`` starts
    one with its own.
    """

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, memory_limit: int | str | None = "auto",
                 host: str = "127.0.0.1", scheduler_port: int = 0,
                 token: str | None = None, security=None,
                 queues: list[str] | None = None, dashboard: bool = True,
                 dashboard_port: int = 0, memory_spill: float | None = 0.60,
                 memory_pause: float | None = 0.80,
                 memory_terminate: float | None = 0.95, journal: str | None = None,
                 resources: dict[str, float] | str | None = None) -> None:
        if n_workers is None:
            n_workers = max(1, machine_size() // max(1, threads_per_worker))
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, got {n_workers!r}")
        if journal is not None and token is None:   # the one its tasks' peers still hold
            from ..server.journal import journal_token

            token = journal_token(journal)
        super().__init__(threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                         queues=queues, token=token, security=security, resources=resources)
        self.processes = processes
        self.journal = None if journal is None else os.path.abspath(journal)
        # worker processes spill results to disk above memory_spill of their limit, pause
        # above memory_pause and are replaced above memory_terminate; in-process workers
        # share this process's memory: not watched
        self.memory_spill = check_fraction("memory_spill", memory_spill)
        self.memory_pause = check_fraction("memory_pause", memory_pause)
        self.memory_terminate = check_fraction("memory_terminate", memory_terminate)
        self._dashboard_port = dashboard_port if dashboard else -1
        self._dashboard: Dashboard | None = None
        self._scheme = "tls" if security is not None and security.tls else "tcp"
        self._listen = f"{self._scheme}://{host}:{scheduler_port}"
        self._scheduler_proc: subprocess.Popen | None = None
        self._prespawned: dict[str, _WorkerProcess] = {}   # the first workers, by name
        self._starting: set[_WorkerProcess] = set()
        self._thread: LoopThread | None = None
        self.scheduler: Scheduler | None = None             # in process: the Scheduler
        # worker processes spill to disk under here; removed when the cluster closes
        self.local_directory = tempfile.mkdtemp(prefix="nbcluster-") if processes else ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            import warnings

            warnings.warn(f"LocalCluster listens on {host}: other machines can reach it; anyone "
                          "with the cluster's token can run code here"
                          + ("" if self._scheme == "tls" else ", and traffic is not encrypted "
                             "(pass security=Security.temporary() for TLS)"), stacklevel=2)
        self._start(n_workers)

    @property
    def kind(self) -> str:
        return "processes" if self.processes else "in-process"

    @property
    def memory_limit(self) -> int | None:
        """Each worker's memory limit in bytes (None: none); with "auto", this machine's
        memory divided among the workers there are (or would be one)."""
        if not self._memory_auto:
            return self._memory_fixed
        total = self._host_memory(None, 1)
        return None if total is None else max(1, total // max(1, len(self._running)))

    @property
    def _inproc_thread(self) -> LoopThread:
        """The loop of the in-process scheduler and workers (``processes=False``)."""
        if self._thread is None:
            raise ClusterError("this LocalCluster has no in-process loop (processes=True)")
        return self._thread

    @property
    def _inproc_workers(self) -> list:
        """In process: the Worker objects."""
        return [] if self.processes else [e.handle for e in list(self._running)]

    def worker_pids(self) -> dict[str, int]:
        return {e.address: e.handle.proc.pid for e in list(self._running)} \
            if self.processes else {}

    def add_worker(self, queues: list[str] | None = None,
                   resources: dict[str, float] | str | None = None) -> str:
        """Start one more worker (subscribed to ``queues``, default: the cluster's) that has
        ``resources`` (e.g. ``{"GPU": 1}``; default: the cluster's). A replacement of it,
        should it die, has them too."""
        own = parse_resources(resources, "resources")
        if own is None:
            return super().add_worker(queues)
        self._check_open()
        queues = check_queues(queues)
        with self._scaling:
            spec = self._new_specs(1, queues)[0]
            spec.resources = own
            return self._add_one(spec)

    def _default_maximum(self) -> int:
        return machine_size()

    def _scheduler_lost(self) -> str | None:
        proc = self._scheduler_proc
        if proc is not None:
            code = proc.poll()
            return None if code is None else f"the scheduler exited with code {code}"
        if self.scheduler is not None and self.scheduler.closed.is_set():
            return "the scheduler was closed"
        return None

    # ------------------------------------------------------------------ processes
    def _spawn(self, role: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ, NBCLUSTER_TOKEN=self.token)
        if self.security is not None:
            env.update(self.security.to_env())
        # workers see the modules this process sees (functions pickled by reference import)
        paths = [os.path.abspath(p or os.getcwd()) for p in sys.path]
        paths.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
        return subprocess.Popen(
            [sys.executable, "-m", "nbcluster.deploy.spawn", role, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)

    def _spawn_worker(self, spec: WorkerSpec) -> _WorkerProcess:
        memory = [] if not spec.memory_limit else [
            "--memory-limit", str(spec.memory_limit),
            "--memory-spill", str(self.memory_spill or "none"),
            "--memory-pause", str(self.memory_pause or "none"),
            "--memory-terminate", str(self.memory_terminate or "none")]
        return _WorkerProcess(self, spec, [
            "--nthreads", str(self.threads_per_worker), "--name", spec.name, *memory,
            "--spill-dir", os.path.join(self.local_directory, spec.name),
            *(["--queues", ",".join(spec.queues)] if spec.queues else []),
            *(["--resources", ",".join(f"{k}={v!r}" for k, v in spec.resources.items())]
              if spec.resources else [])])

    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        if not self.processes:
            self._start_inprocess_scheduler()
            return
        deadline = time.monotonic() + self.timeout
        self._scheduler_proc = self._spawn("scheduler", "--address", self._listen,
                                           "--dashboard-port", str(self._dashboard_port),
                                           *(["--journal", self.journal] if self.journal else []))
        # the first workers import while the scheduler starts; they read its address from stdin
        for spec in first:
            self._prespawned[spec.name] = self._spawn_worker(spec)
        notices: dict = {}
        self.scheduler_address = _read_address(self._scheduler_proc, "the scheduler",
                                               deadline, notices)
        self._dashboard_link = notices.get("dashboard")

    def _start_workers(self, specs: list[WorkerSpec], timeout: float) -> list:
        results: list[Any] = []
        if not self.processes:
            for spec in specs:
                try:
                    results.append(self._start_worker(spec, timeout))
                except Exception as e:
                    results.append(e)
            return results
        deadline = time.monotonic() + timeout
        procs: list[Any] = []
        for spec in specs:         # all start at once ...
            try:
                wp = self._prespawned.pop(spec.name, None) or self._spawn_worker(spec)
            except Exception as e:
                procs.append(e)
                continue
            self._starting.add(wp)
            procs.append(wp)
            try:
                wp.send_address()
            except OSError:
                pass      # it died: wait_ready says so, with its exit code
        for wp in procs:           # ... then each is waited for
            if isinstance(wp, BaseException):
                results.append(wp)
                continue
            try:
                wp.wait_ready(deadline)
                results.append(wp)
            except Exception as e:
                wp.kill()
                results.append(e)
            finally:
                self._starting.discard(wp)
        return results

    def _stop_workers(self, handles: list, grace: float) -> None:
        if not self.processes:
            for w in handles:
                self._inproc_thread.run(w.close("retired"))
            return
        for wp in handles:
            wp.stop()                      # asked to exit (stdin closes) ...
        deadline = time.monotonic() + grace
        for wp in handles:
            try:
                wp.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                wp.kill()                  # ... and killed if a task holds it up
                wp.proc.wait()

    def _stop_worker(self, handle: Any, grace: float) -> None:
        self._stop_workers([handle], grace)

    def _set_memory_limits(self, changes: list[tuple[Any, int]]) -> list:
        if not self.processes:
            for w, limit in changes:
                self._inproc_thread.run(_call(w.set_memory_limit, limit))
            return [w for w, _ in changes]
        told = [(wp, limit) for wp, limit in changes if wp.tell_memory_limit(limit)]
        deadline = time.monotonic() + self.timeout
        for wp, limit in told:
            wp.wait_memory_limit(limit, deadline)
        return [wp for wp, _ in told]

    def _abort_starts(self) -> None:
        starting = list(self._prespawned.values()) + list(self._starting)
        self._prespawned.clear()
        for wp in starting:
            wp.kill()
        for wp in starting:
            try:
                wp.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _stop_scheduler(self) -> None:
        proc = self._scheduler_proc
        if proc is None:
            return
        try:
            _stdin(proc).close()           # it exits when its stdin closes
        except OSError:
            pass
        try:
            proc.wait(self.close_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _close_pipes(proc)

    def _shutdown(self, handles: list) -> None:
        if not self.processes:
            self._close_inprocess(handles)
            return
        try:
            super()._shutdown(handles)     # workers first: none of them sees the scheduler go
        finally:
            for wp in handles:
                _close_pipes(wp.proc)
            # spilled results of workers that could not clean up (killed, over memory)
            shutil.rmtree(self.local_directory, ignore_errors=True)

    # ------------------------------------------------------------------ in process
    def _start_inprocess_scheduler(self) -> None:
        self._thread, self.scheduler, self._dashboard = start_inprocess_scheduler(
            "nbcluster-local", f"inproc://scheduler-{id(self)}", self.token,
            journal=self.journal, dashboard_port=self._dashboard_port)
        self.scheduler_address = self.scheduler.address
        self._dashboard_link = self.scheduler.dashboard_link

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> Any:
        """In process (worker processes start in ``_start_workers``)."""
        from ..server.worker import Worker

        assert self.scheduler_address is not None, "the scheduler starts first"
        w = Worker(self.scheduler_address, nthreads=self.threads_per_worker, name=spec.name,
                   token=self.token, listen_address="inproc://",
                   memory_limit=parse_memory_limit(spec.memory_limit),   # bytes by now
                   queues=spec.queues, memory_pause=None,
                   memory_terminate=None, memory_spill=None, resources=spec.resources)
        self._inproc_thread.run(w.start(), timeout)
        return w

    def _close_inprocess(self, workers: list) -> None:
        if self._thread is None:
            return
        try:
            if self._dashboard is not None:
                self._dashboard.stop()
            for w in workers:
                self._thread.run(w.close("cluster closing"))
            if self.scheduler is not None:
                self._thread.run(self.scheduler.close())
        finally:
            self._thread.stop()
