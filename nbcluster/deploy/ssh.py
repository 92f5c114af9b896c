"""SSHCluster: a scheduler and workers on other machines, started over SSH with asyncssh.

The first host runs the scheduler, the others run workers (one host runs both). Each remote
process is the ordinary command line (``python -m nbcluster scheduler|worker``), so what runs
remotely is exactly what an administrator would start by hand; the token reaches it on stdin.
"""

from __future__ import annotations

import asyncio
import shlex
import threading
import weakref
from collections import Counter
from typing import Any

from ..loop_thread import LoopThread
from . import at_exit
from .cluster import Cluster, WorkerSpec, check_queues
from .ssh_remote import RemoteProcess, host_memory, import_asyncssh

SCHEDULER_OPTIONS = ("host", "port", "dashboard_port", "connection_file")
WORKER_OPTIONS = ("nthreads", "queues", "host", "port", "memory_limit", "memory_spill",
                  "memory_pause", "memory_terminate")



def _per_host(value, hosts: list[str], what: str, check) -> list:
    """``value`` for every host: one value for all, or a list with one per host."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(hosts):
            raise ValueError(f"{what} has {len(value)} entries for {len(hosts)} hosts: give "
                             "one value for all hosts or one per host")
        return [check(v) for v in value]
    return [check(value)] * len(hosts)


def _check_connect_options(options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"connect_options must be a dict (or a list of dicts, one per host), "
                        f"got {options!r}")
    return dict(options)


def _check_python(python) -> list[str]:
    if not isinstance(python, str) or not python.strip():
        raise TypeError(f"remote_python must be a command such as 'python3' (or a list of them, "
                        f"one per host), got {python!r}")
    return shlex.split(python)


def _check_options(options, allowed: tuple, what: str) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{what} does not take {', '.join(unknown)} (it takes "
                         f"{', '.join(allowed)})")
    return options


def _memory_arg(limit: int | str | None) -> str:
    return "none" if limit is None else str(limit)


class SSHCluster(Cluster):
    """A scheduler on ``hosts[0]`` and ``n_workers_per_host`` workers on each other host.

    ``connect_options`` go to ``asyncssh.connect`` (port, username, client_keys, known_hosts,
    ...): one dict for all hosts or a list with one per host; so may ``remote_python``, the
    command that runs a Python with nbcluster installed on each host. ``scheduler_options``:
    host (default ``hosts[0]``, the address the workers and clients reach it on), port
    (default 0: any free one), dashboard_port (-1: none), connection_file. ``worker_options``:
    nthreads, queues, host (default: the worker's host name), port, memory_limit ("4GB": each
    worker's; default "auto": the host's memory divided among the workers started there),
    memory_spill, memory_pause, memory_terminate (fractions of it). With
    ``security=Security(...)`` everything talks TLS; its files are copied to each host.
    ``token``: the cluster's shared secret (default: a new random one). ``timeout``: seconds
    each process has to connect and report its address; ``close_timeout``: how long a process
    has to end after SIGTERM before it gets SIGKILL. Hosts need a POSIX shell.

    Raises ConnectError when a host cannot be reached or refuses the login, and ClusterError
    with the remote output when a process does not start; what had started is stopped.
    A worker that dies is reported and replaced.

    With "auto" memory, a worker started on a host that already runs workers gets its share
    of the host's memory (asked of the host once); running remote workers keep the limit they
    started with (there is no channel to change it).
    """

    kind = "ssh"

    def __init__(self, hosts: list[str], connect_options: dict | list[dict] | None = None,
                 worker_options: dict | None = None, scheduler_options: dict | None = None,
                 n_workers_per_host: int = 1, remote_python: str | list[str] = "python3",
                 security=None, token: str | None = None, timeout: float = 30.0,
                 close_timeout: float = 5.0) -> None:
        self.closed = True   # until started: __del__ and close have nothing to do
        if isinstance(hosts, str) or not hosts or not all(isinstance(h, str) and h
                                                          for h in hosts):
            raise TypeError(f"hosts must be a non-empty list of host names (the first runs "
                            f"the scheduler), got {hosts!r}")
        if not isinstance(n_workers_per_host, int) or n_workers_per_host < 0:
            raise ValueError(f"n_workers_per_host must be a non-negative int, "
                             f"got {n_workers_per_host!r}")
        self.hosts = list(hosts)
        self._connect_options = _per_host(connect_options, self.hosts, "connect_options",
                                          _check_connect_options)
        self._python = _per_host(remote_python, self.hosts, "remote_python", _check_python)
        self.scheduler_options = _check_options(scheduler_options, SCHEDULER_OPTIONS,
                                                "scheduler_options")
        self.worker_options = _check_options(worker_options, WORKER_OPTIONS, "worker_options")
        self.worker_options["queues"] = check_queues(self.worker_options.get("queues"))
        import_asyncssh()    # fail now, with the install hint, rather than on the loop
        super().__init__(threads_per_worker=int(self.worker_options.get("nthreads", 1)),
                         memory_limit=self.worker_options.get("memory_limit", "auto"),
                         queues=self.worker_options["queues"], token=token, security=security,
                         timeout=timeout, close_timeout=close_timeout)
        # hosts[1:] run workers; a single host runs both
        self._worker_slots = list(range(1, len(self.hosts))) or [0]
        self._n_workers_per_host = n_workers_per_host
        self._scheduler: RemoteProcess | None = None
        self._remotes: set[RemoteProcess] = set()  # everything started, ready or not
        self._tasks: set[asyncio.Task] = set()     # worker starts under way
        self._host_totals: dict[str, int | None] = {}
        self._thread = LoopThread("nbcluster-ssh")
        at_exit.OPEN.add(self)
        self._start(n_workers_per_host * len(self._worker_slots))

    # ------------------------------------------------------------------ hooks
    def _run(self, coro, timeout: float | None = None):
        return self._thread.run(coro, timeout)

    def _new_remote(self, role: str, index: int, name: str) -> RemoteProcess:
        remote = RemoteProcess(role, name, self.hosts[index], self._connect_options[index],
                               self._python[index], _exit_callback(self))
        self._remotes.add(remote)
        return remote

    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        self._run(self._start_remote_scheduler())

    async def _start_remote_scheduler(self) -> None:
        self._scheduler = self._new_remote("scheduler", 0, "scheduler")
        opts = self.scheduler_options
        args = ["scheduler", "--token-stdin", "--host", str(opts.get("host", self.hosts[0])),
                "--port", str(opts.get("port", 0)),
                "--dashboard-port", str(opts.get("dashboard_port", 0))]
        if opts.get("connection_file"):
            args += ["--connection-file", str(opts["connection_file"])]
        await self._scheduler.start(args, self.token, self.security, self.timeout)
        self.scheduler_address = self._scheduler.address
        self._dashboard_link = self._scheduler.dashboard_link

    def _name_for(self, host: Any) -> str:
        return f"{host}-{next(self._names)}"

    def _new_specs(self, n: int, queues: list[str] | None) -> list[WorkerSpec]:
        """New workers go to the least busy hosts."""
        load = Counter({i: 0 for i in self._worker_slots})
        load.update(e.spec.options["slot"] for e in list(self._running))
        specs = []
        for _ in range(n):
            slot = min(self._worker_slots, key=load.__getitem__)
            load[slot] += 1
            specs.append(self._spec(self.hosts[slot], queues, slot=slot))
        return specs

    def _slot_of(self, host: str) -> int:
        return next((i for i in self._worker_slots if self.hosts[i] == host),
                    self.hosts.index(host))

    def _host_memory(self, host: Any, n: int) -> int | None:
        if n <= 1:
            return None       # a lone worker takes its host's memory itself: no need to ask
        if host not in self._host_totals:
            slot = self._slot_of(host)
            self._host_totals[host] = self._run(host_memory(
                host, self._connect_options[slot], self._python[slot], self.timeout),
                2 * self.timeout + 5)
        return self._host_totals[host]

    def _start_workers(self, specs: list[WorkerSpec], timeout: float) -> list:
        async def start_all() -> list:
            return await asyncio.gather(*(self._start_remote_worker(s, timeout) for s in specs),
                                        return_exceptions=True)
        return self._run(start_all(), timeout + self.close_timeout + 30)

    async def _start_remote_worker(self, spec: WorkerSpec, timeout: float) -> RemoteProcess:
        task = asyncio.current_task()
        assert task is not None   # a coroutine runs in a task
        self._tasks.add(task)
        try:
            remote = self._new_remote("worker", spec.options["slot"], spec.name)
            opts = self.worker_options
            assert self.scheduler_address is not None, "the scheduler starts first"
            args = ["worker", self.scheduler_address, "--token-stdin", "--name", spec.name,
                    "--nthreads", str(self.threads_per_worker),
                    "--host", str(opts.get("host", spec.host)), "--port", str(opts.get("port", 0)),
                    *(["--queues", ",".join(spec.queues)] if spec.queues else []),
                    "--memory-limit", _memory_arg(spec.memory_limit),
                    *[arg for name in ("memory_spill", "memory_pause", "memory_terminate")
                      if name in opts
                      for arg in (f"--{name.replace('_', '-')}", str(opts[name]).lower())]]
            try:
                await remote.start(args, self.token, self.security, timeout)
            except BaseException:
                await remote.stop(self.close_timeout)
                self._remotes.discard(remote)
                raise
            return remote
        finally:
            self._tasks.discard(task)

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> RemoteProcess:
        result = self._start_workers([spec], timeout)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _stop_workers(self, handles: list, grace: float) -> None:
        async def stop_all() -> None:
            await asyncio.gather(*(r.stop(grace) for r in handles), return_exceptions=True)
            self._remotes.difference_update(handles)
        self._run(stop_all(), grace + 30)

    def _stop_worker(self, handle: Any, grace: float) -> None:
        self._stop_workers([handle], grace)

    def _abort_starts(self) -> None:
        def cancel() -> None:
            for task in list(self._tasks):
                task.cancel()
        try:
            self._thread.loop.call_soon_threadsafe(cancel)
        except RuntimeError:     # the loop is closed
            pass

    def _stop_scheduler(self) -> None:
        if self._scheduler is not None:
            self._run(self._scheduler.stop(self.close_timeout), self.close_timeout + 30)

    def _shutdown(self, handles: list) -> None:
        try:
            self._run(self._close(), 2 * self.close_timeout + 30)
        finally:
            self._thread.stop()

    async def _close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)   # they clean up first
        workers = [r for r in self._remotes if r is not self._scheduler]
        # workers first: then none of them sees the scheduler go and complains
        await asyncio.gather(*(r.stop(self.close_timeout) for r in workers),
                             return_exceptions=True)
        if self._scheduler is not None:
            await self._scheduler.stop(self.close_timeout)
        self._remotes.clear()

    def _default_maximum(self) -> int:
        return max(1, self._n_workers_per_host * len(self._worker_slots))

    def _remote_exited(self, remote: RemoteProcess, code: int | None) -> None:
        """On the loop: a remote process ended without being stopped."""
        if self.closed:
            return
        how = "lost its SSH connection" if code is None else f"exited with code {code}"
        if remote.role == "scheduler":
            self._log.error("SSHCluster: the scheduler on %s %s; the cluster no longer works. "
                            "Its last output:\n%s", remote.host, how, remote.output())
            return
        self._worker_exited(remote, f"on {remote.host} {how}",
                            replace=self._scheduler is not None
                            and not self._scheduler.exited.is_set(),
                            details=f". Its last output:\n{remote.output()}")

    # ------------------------------------------------------------------ public
    def remote_processes(self) -> list[dict]:
        """Role, name, host, pid (on that host) and address of every remote process."""
        remotes = ([self._scheduler] if self._scheduler is not None else []) + \
            [e.handle for e in list(self._running)]
        return [{"role": r.role, "name": r.name, "host": r.host, "pid": r.pid,
                 "address": r.address} for r in remotes]

    def add_worker(self, queues: list[str] | None = None, *, host: str | None = None) -> str:
        """Start one more worker (subscribed to ``queues``, default: the cluster's) on
        ``host`` (one of ``hosts``; default: the least busy)."""
        self._check_open()
        queues = check_queues(queues)
        if host is not None and host not in self.hosts:
            raise ValueError(f"add_worker: {host!r} is not one of this cluster's hosts "
                             f"{self.hosts}")
        with self._scaling:
            spec = self._new_specs(1, queues)[0] if host is None else \
                self._spec(host, queues, slot=self._slot_of(host))
            return self._add_one(spec)

    def close(self) -> None:
        """Stop every remote process (terminate, then kill) and close the SSH connections."""
        at_exit.OPEN.discard(self)
        thread = getattr(self, "_thread", None)
        if thread is not None and threading.current_thread() is thread.thread:
            # called on our own loop (garbage collection there): finish without waiting
            with self._lock:
                if self.closed:
                    return
                self.closed = True
            for task in list(self._tasks):
                task.cancel()
            thread.loop.create_task(self._close()).add_done_callback(
                lambda _: thread.loop.stop())
            return
        super().close()


def _exit_callback(cluster: SSHCluster):
    """Report exits to the cluster without keeping it alive (so ``__del__`` can run)."""
    ref = weakref.ref(cluster)

    def on_exit(remote: RemoteProcess, code: int | None) -> None:
        c = ref()
        if c is not None:
            c._remote_exited(remote, code)
    return on_exit
