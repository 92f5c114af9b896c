"""LocalCluster: a scheduler and workers on this machine, as processes or in this process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..comm.auth import new_token
from ..config import MEMORY_EXIT_CODE, check_fraction, parse_memory_limit
from .adaptive import restart_adaptive, stop_adaptive
from ..errors import ClusterError

logger = logging.getLogger("nbcluster.deploy")

START_TIMEOUT = 30.0
REPLACE_ATTEMPTS = 5
RESTART_GRACE = 2.0       # seconds a worker has to exit on restart before it is killed


def machine_size() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _WorkerProcess:
    """One worker process and the thread that notices when it ends."""

    def __init__(self, cluster: "LocalCluster", name: str, queues: list[str] | None,
                 send_address: bool = True) -> None:
        self.cluster = cluster
        self.name = name
        self.queues = queues
        self.address = ""
        self.retired = False
        self.memory_limit = cluster.memory_limit     # what it started with or was last told
        self.proc = cluster._spawn("worker", "--nthreads", str(cluster.threads_per_worker),
                                   "--name", name, *cluster._memory_args(),
                                   "--spill-dir", os.path.join(cluster.local_directory, name),
                                   *(["--queues", ",".join(queues)] if queues else []))
        if send_address:
            self.send_address()

    def send_address(self) -> None:
        self.proc.stdin.write(self.cluster.scheduler_address.encode() + b"\n")
        self.proc.stdin.flush()

    def tell_memory_limit(self, limit: int | None) -> bool:
        """Ask the process to take a new memory limit (see ``spawn.py``); False if it is gone."""
        self.memory_limit = limit
        try:
            self.proc.stdin.write(f"MEMORY_LIMIT {limit or 'none'}\n".encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):   # exited (it will be replaced with the new limit)
            return False

    def wait_memory_limit(self, deadline: float) -> None:
        """Until the process has applied its limit and told the scheduler (it echoes it)."""
        line = f"MEMORY_LIMIT {self.memory_limit or 'none'}"
        if _read_line(self.proc, line, deadline) is None and self.proc.poll() is None:
            logger.warning("worker %s did not confirm its new memory limit", self.name)

    def wait_ready(self, deadline: float) -> None:
        self.address = _read_address(self.proc, f"worker {self.name}", deadline)
        threading.Thread(target=self._watch, name=f"nbcluster-watch-{self.name}",
                         daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        self.cluster._worker_exited(self, code)

    def stop(self) -> None:
        self.retired = True
        try:
            self.proc.stdin.close()     # the child exits when its stdin closes
        except OSError:
            pass

    def kill(self) -> None:
        self.retired = True
        if self.proc.poll() is None:
            self.proc.kill()


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

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    if not result:
        proc.kill()
        raise ClusterError(f"{what} did not start within {START_TIMEOUT:g} s "
                           f"(exit code {proc.poll()})")
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


def _check_queues(queues) -> list[str] | None:
    if queues is None:
        return None
    if isinstance(queues, str):
        queues = queues.split(",")
    from ..client.options import check_queue_name

    names = [check_queue_name(q.strip(), "queues") for q in queues]
    if not names:
        raise ValueError("queues must name at least one queue")
    return names


class LocalCluster:
    """A scheduler and ``n_workers`` workers on this machine.

    With ``processes=True`` (the default) each is its own process; LocalCluster replaces a
    worker process that dies. With ``processes=False`` everything runs in this process on a
    background thread, connected by an in-memory transport.

    ``memory_limit="auto"`` (the default) shares this machine's memory among the workers there
    are: each of n workers may use total / n, re-divided whenever the number changes
    (``scale``, ``add_worker``, ``retire_worker``, ``adapt``), so together they stay within the
    machine. A limit given as bytes or text (``"4GB"``) is each worker's, however many there
    are; ``None`` means no limit.
    """

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, memory_limit: int | str | None = "auto",
                 host: str = "127.0.0.1", scheduler_port: int = 0,
                 token: str | None = None, security=None,
                 queues: list[str] | None = None, dashboard: bool = True,
                 dashboard_port: int = 0, memory_spill: float | None = 0.60,
                 memory_pause: float | None = 0.80,
                 memory_terminate: float | None = 0.95) -> None:
        if n_workers is None:
            n_workers = max(1, machine_size() // max(1, threads_per_worker))
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, got {n_workers!r}")
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be a positive int, got {threads_per_worker!r}")
        self.threads_per_worker = threads_per_worker
        self.processes = processes
        # "auto": the machine's memory divided among the workers there are, re-divided when
        # the cluster scales; a limit given explicitly is each worker's, whatever their number
        self._memory_total = parse_memory_limit("auto") if memory_limit == "auto" else None
        self.memory_limit = parse_memory_limit(memory_limit, share=n_workers) \
            if self._memory_total is None else self._memory_total // max(1, n_workers)
        self._scaling = threading.RLock()     # one change of the number of workers at a time
        # worker processes spill results to disk above memory_spill of their limit, pause
        # above memory_pause and are replaced above memory_terminate; in-process workers
        # share this process's memory: not watched
        self.memory_spill = check_fraction("memory_spill", memory_spill)
        self.memory_pause = check_fraction("memory_pause", memory_pause)
        self.memory_terminate = check_fraction("memory_terminate", memory_terminate)
        self.queues = _check_queues(queues)
        self._dashboard_port = dashboard_port if dashboard else -1
        self._dashboard_link: str | None = None
        self._dashboard = None
        self.token = token or new_token()
        self.security = security
        self._scheme = "tls" if security is not None and security.tls else "tcp"
        self.closed = False
        self._lock = threading.Lock()
        self._names = iter(range(10**9))
        self._procs: list[_WorkerProcess] = []
        self._scheduler_proc: subprocess.Popen | None = None
        self._thread = None
        self._inproc_workers: list = []
        self.restarts = 0
        self._adaptive = None
        # worker processes spill to disk under here; removed when the cluster closes
        self.local_directory = tempfile.mkdtemp(prefix="nbcluster-") if processes else ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            import warnings

            warnings.warn(f"LocalCluster listens on {host}: other machines can reach it; anyone "
                          "with the cluster's token can run code here"
                          + ("" if self._scheme == "tls" else ", and traffic is not encrypted "
                             "(pass security=Security.temporary() for TLS)"), stacklevel=2)
        if processes:
            try:
                self._start_processes(n_workers, host, scheduler_port)
            except BaseException:
                shutil.rmtree(self.local_directory, ignore_errors=True)
                raise
        else:
            self._start_inprocess(n_workers)

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

    def _memory_args(self) -> list[str]:
        if not self.memory_limit:
            return []
        return ["--memory-limit", str(self.memory_limit),
                "--memory-spill", str(self.memory_spill or "none"),
                "--memory-pause", str(self.memory_pause or "none"),
                "--memory-terminate", str(self.memory_terminate or "none")]

    def _start_processes(self, n_workers: int, host: str, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        self._scheduler_proc = self._spawn(
            "scheduler", "--address", f"{self._scheme}://{host}:{port}",
            "--dashboard-port", str(self._dashboard_port))
        # workers import while the scheduler starts; they read its address from stdin
        pending = [self._new_worker_proc(defer=True) for _ in range(n_workers)]
        try:
            notices: dict = {}
            self.scheduler_address = _read_address(self._scheduler_proc, "the scheduler",
                                                   deadline, notices)
            self._dashboard_link = notices.get("dashboard")
            for wp in pending:
                wp.send_address()
            for wp in pending:
                wp.wait_ready(deadline)
                self._procs.append(wp)
        except BaseException:
            for wp in pending:
                wp.kill()
            self._scheduler_proc.kill()
            raise

    def _new_worker_proc(self, defer: bool = False, queues=None) -> _WorkerProcess:
        return _WorkerProcess(self, f"worker-{next(self._names)}", queues or self.queues,
                              send_address=not defer)

    def _worker_exited(self, wp: _WorkerProcess, code: int) -> None:
        with self._lock:
            if self.closed or wp.retired:
                return
            why = "went over its memory limit" if code == MEMORY_EXIT_CODE else \
                f"exited with code {code}"
            logger.warning("worker %s (%s) %s; starting a replacement", wp.name, wp.address, why)
            if wp in self._procs:
                self._procs.remove(wp)
        for attempt in range(REPLACE_ATTEMPTS):
            # a fresh worker may be handed the task that killed the last one and die too
            # before it reports ready: try again (the scheduler stops that task after 3)
            try:
                new = _WorkerProcess(self, f"worker-{next(self._names)}", wp.queues)
                new.wait_ready(time.monotonic() + START_TIMEOUT)
                break
            except Exception as e:
                logger.warning("replacement for worker %s failed (%s)", wp.name, e)
                if self.closed:
                    return
        else:
            logger.error("could not replace worker %s after %d attempts", wp.name,
                         REPLACE_ATTEMPTS)
            return
        with self._lock:
            if self.closed:
                new.kill()
                return
            self._procs.append(new)
            self.restarts += 1
            if new.memory_limit != self.memory_limit:   # the cluster scaled meanwhile
                new.tell_memory_limit(self.memory_limit)

    # ------------------------------------------------------------------ in process
    def _start_inprocess(self, n_workers: int) -> None:
        from ..server.scheduler import Scheduler
        from .threaded import LoopThread

        self._thread = LoopThread("nbcluster-local")
        self.scheduler = self._thread.run(Scheduler(f"inproc://scheduler-{id(self)}",
                                                    token=self.token).start())
        self.scheduler_address = self.scheduler.address
        if self._dashboard_port >= 0:
            try:
                from ..dashboard.server import start_dashboard

                self._dashboard = start_dashboard(self.scheduler, port=self._dashboard_port,
                                                  loop=self._thread.loop)
                self._dashboard_link = self.scheduler.dashboard_link = self._dashboard.link
            except ImportError:
                logger.info("no dashboard: bokeh is not installed")
        for _ in range(n_workers):
            self._add_inprocess_worker()

    def _add_inprocess_worker(self, queues=None):
        from ..server.worker import Worker

        w = Worker(self.scheduler_address, nthreads=self.threads_per_worker,
                   name=f"worker-{next(self._names)}", token=self.token,
                   listen_address="inproc://", memory_limit=self.memory_limit,
                   queues=queues or self.queues, memory_pause=None, memory_terminate=None,
                   memory_spill=None)
        self._thread.run(w.start())
        self._inproc_workers.append(w)
        return w

    # ------------------------------------------------------------------ public
    @property
    def workers(self) -> list[str]:
        if self.processes:
            return [wp.address for wp in self._procs]
        return [w.address for w in self._inproc_workers]

    def adapt(self, minimum: int = 0, maximum: int | None = None, interval: float = 1.0,
              wait_count: int = 3):
        """Grow while work waits, retire workers idle (running nothing, holding nothing) for
        ``wait_count`` checks; ``maximum`` defaults to this machine's cores. ``scale()`` or
        the returned object's ``stop()`` ends it (see ``deploy/adaptive.py``)."""
        self._check_open()
        return restart_adaptive(self, minimum, machine_size() if maximum is None else maximum,
                                interval, wait_count)

    def scale(self, n: int) -> None:
        """Add or remove workers until there are ``n`` (and stop adapting, if it was). With
        ``memory_limit="auto"`` every worker's limit becomes the machine's memory / ``n``:
        the workers there are take the smaller share before new ones start, and the larger
        one after others have gone."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"scale needs a non-negative int, got {n!r}")
        self._check_open()
        stop_adaptive(self)
        with self._scaling:
            if n > len(self.workers):
                self._share_memory(n)
            while len(self.workers) < n:
                self._add_worker(self.queues)
            while len(self.workers) > n:
                self._retire_worker(None)
            self._share_memory(n)

    def add_worker(self, queues: list[str] | None = None) -> str:
        """Start one more worker (subscribed to ``queues``, default: the cluster's)."""
        self._check_open()
        queues = _check_queues(queues)
        with self._scaling:
            self._share_memory(len(self.workers) + 1)
            return self._add_worker(queues or self.queues)

    def retire_worker(self, address: str | None = None) -> None:
        self._check_open()
        with self._scaling:
            self._retire_worker(address)
            self._share_memory(len(self.workers))

    def _add_worker(self, queues: list[str] | None) -> str:
        if not self.processes:
            return self._add_inprocess_worker(queues).address
        wp = _WorkerProcess(self, f"worker-{next(self._names)}", queues)
        wp.wait_ready(time.monotonic() + START_TIMEOUT)
        with self._lock:
            self._procs.append(wp)
        return wp.address

    def _retire_worker(self, address: str | None) -> None:
        if self.processes:
            with self._lock:
                wp = next((p for p in reversed(self._procs) if address in (None, p.address)), None)
                if wp is None:
                    raise ValueError(f"no worker {address!r} in this cluster")
                self._procs.remove(wp)
            wp.stop()
            try:
                wp.proc.wait(10)
            except subprocess.TimeoutExpired:
                wp.kill()
        else:
            w = next((w for w in reversed(self._inproc_workers) if address in (None, w.address)), None)
            if w is None:
                raise ValueError(f"no worker {address!r} in this cluster")
            self._inproc_workers.remove(w)
            self._thread.run(w.close("retired"))

    def _share_memory(self, n: int) -> None:
        """With ``memory_limit="auto"``: each of ``n`` workers may use the machine's memory
        / n. Workers started from now on get that; the live ones are told, and have applied
        it (and told the scheduler) when this returns."""
        if self._memory_total is None or n < 1:
            return
        self.memory_limit = limit = self._memory_total // n
        if not self.processes:
            for w in list(self._inproc_workers):
                if w.memory_limit != limit:
                    self._thread.run(_call(w.set_memory_limit, limit))
            return
        with self._lock:
            told = [wp for wp in self._procs
                    if wp.memory_limit != limit and wp.tell_memory_limit(limit)]
        deadline = time.monotonic() + START_TIMEOUT
        for wp in told:
            wp.wait_memory_limit(deadline)

    def restart_workers(self, timeout: float = START_TIMEOUT) -> None:
        """Replace every worker with a new one: new processes, so their memory starts clean
        (what ``client.restart()`` calls). In-process workers are closed and made again."""
        self._check_open()
        if not self.processes:
            old, self._inproc_workers = self._inproc_workers, []
            for w in old:
                self._thread.run(w.close("restart"))
            for w in old:
                self._add_inprocess_worker(w.queues)
            return
        with self._lock:
            old, self._procs = self._procs, []
        for wp in old:
            wp.stop()                      # asked to exit (stdin closes) ...
        deadline = time.monotonic() + RESTART_GRACE
        for wp in old:
            try:
                wp.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                wp.kill()                  # ... and killed if a task holds it up
                wp.proc.wait()
        new = [_WorkerProcess(self, f"worker-{next(self._names)}", wp.queues) for wp in old]
        deadline = time.monotonic() + timeout
        try:
            for wp in new:
                wp.wait_ready(deadline)
        except Exception:
            for wp in new:
                wp.kill()
            raise
        with self._lock:
            self._procs.extend(new)

    def worker_pids(self) -> dict[str, int]:
        return {wp.address: wp.proc.pid for wp in self._procs}

    def _check_open(self) -> None:
        if self.closed:
            raise ClusterError("this LocalCluster is closed")

    def close(self) -> None:
        stop_adaptive(self)
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if self.processes:
            procs = [wp.proc for wp in self._procs] + [self._scheduler_proc]
            for wp in self._procs:
                wp.stop()
            deadline = time.monotonic() + 5
            for wp in self._procs:   # workers first: then none of them sees the scheduler go
                try:
                    wp.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if self._scheduler_proc is not None:
                try:
                    self._scheduler_proc.stdin.close()
                except OSError:
                    pass
            for p in procs:
                if p is None:
                    continue
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                for stream in (p.stdout, p.stdin):
                    try:
                        stream.close()
                    except Exception:
                        pass
            # spilled results of workers that could not clean up (killed, over memory)
            shutil.rmtree(self.local_directory, ignore_errors=True)
        elif self._thread is not None:
            if self._dashboard is not None:
                self._dashboard.stop()
            for w in self._inproc_workers:
                self._thread.run(w.close("cluster closing"))
            self._thread.run(self.scheduler.close())
            self._thread.stop()

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's status page (None without bokeh or with ``dashboard=False``)."""
        return self._dashboard_link

    def __enter__(self) -> "LocalCluster":
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
        kind = "processes" if self.processes else "in-process"
        return (f"<LocalCluster {getattr(self, 'scheduler_address', '?')} "
                f"workers={len(self.workers)} threads={self.threads_per_worker} {kind}"
                f"{' closed' if self.closed else ''}>")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<li><code>{a}</code></li>" for a in self.workers)
        link = self.dashboard_link
        dash = (f"<br>Dashboard: <a href='{escape(link, quote=True)}' target='_blank'>"
                f"{escape(link)}</a>" if link else "")
        return (f"<div><b>LocalCluster</b> ({'processes' if self.processes else 'in-process'})"
                f"<br>Scheduler: <code>{self.scheduler_address}</code>{dash}<br>"
                f"Workers ({len(self.workers)}, {self.threads_per_worker} threads each):"
                f"<ul>{rows}</ul></div>")
