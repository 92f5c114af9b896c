"""SSHCluster: a scheduler and workers on other machines, started over SSH with asyncssh.

The first host runs the scheduler, the others run workers (one host runs both). Each remote
process is the ordinary command line (``python -m nbcluster scheduler|worker``), so what runs
remotely is exactly what an administrator would start by hand; the token reaches it on stdin.
"""

from __future__ import annotations

import asyncio
import atexit
import html
import itertools
import logging
import shlex
import threading
import weakref

from ..comm.auth import new_token
from ..errors import ClusterError
from ..loop_thread import LoopThread
from .adaptive import restart_adaptive, stop_adaptive
from .local import REPLACE_ATTEMPTS, _check_queues
from .ssh_remote import RemoteProcess, import_asyncssh

logger = logging.getLogger("nbcluster.deploy.ssh")

SCHEDULER_OPTIONS = ("host", "port", "dashboard_port", "connection_file")
WORKER_OPTIONS = ("nthreads", "queues", "host", "port", "memory_limit", "memory_spill",
                  "memory_pause", "memory_terminate")

_open_clusters: "weakref.WeakSet[SSHCluster]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for cluster in list(_open_clusters):
        try:
            cluster.close()
        except Exception:
            pass


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


class SSHCluster:
    """A scheduler on ``hosts[0]`` and ``n_workers_per_host`` workers on each other host.

    ``connect_options`` go to ``asyncssh.connect`` (port, username, client_keys, known_hosts,
    ...): one dict for all hosts or a list with one per host; so may ``remote_python``, the
    command that runs a Python with nbcluster installed on each host. ``scheduler_options``:
    host (default ``hosts[0]``, the address the workers and clients reach it on), port
    (default 0: any free one), dashboard_port (-1: none), connection_file. ``worker_options``:
    nthreads, queues, host (default: the worker's host name), port, memory_limit ("4GB",
    default "auto": the host's memory), memory_spill, memory_pause, memory_terminate
    (fractions of it). With
    ``security=Security(...)`` everything talks TLS; its files are copied to each host.
    ``token``: the cluster's shared secret (default: a new random one). ``timeout``: seconds
    each process has to connect and report its address; ``close_timeout``: how long a process
    has to end after SIGTERM before it gets SIGKILL. Hosts need a POSIX shell.

    Raises ConnectError when a host cannot be reached or refuses the login, and ClusterError
    with the remote output when a process does not start; what had started is stopped.
    A worker that dies is reported and replaced.
    """

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
        self.worker_options["queues"] = _check_queues(self.worker_options.get("queues"))
        import_asyncssh()    # fail now, with the install hint, rather than on the loop
        self.security = security
        self.token = token or new_token()
        self.timeout = timeout
        self.close_timeout = close_timeout
        self.restarts = 0
        self.scheduler_address: str | None = None
        # hosts[1:] run workers; a single host runs both
        self._worker_slots = list(range(1, len(self.hosts))) or [0]
        self._n_workers_per_host = n_workers_per_host
        self._adaptive = None
        self._names = itertools.count()
        self._scheduler: RemoteProcess | None = None
        self._workers: list[RemoteProcess] = []    # ready workers, in start order
        self._remotes: set[RemoteProcess] = set()  # everything started, ready or not
        self._tasks: set[asyncio.Task] = set()     # replacements under way
        self._lock = threading.Lock()
        self._thread = LoopThread("nbcluster-ssh")
        self.closed = False
        _open_clusters.add(self)
        try:
            self._run(self._start(n_workers_per_host))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ on the loop
    def _run(self, coro, timeout: float | None = None):
        return self._thread.run(coro, timeout)

    def _new_remote(self, role: str, index: int, name: str) -> RemoteProcess:
        remote = RemoteProcess(role, name, self.hosts[index], self._connect_options[index],
                               self._python[index], _exit_callback(self))
        remote.index = index
        self._remotes.add(remote)
        return remote

    async def _start(self, n_workers_per_host: int) -> None:
        self._scheduler = self._new_remote("scheduler", 0, "scheduler")
        opts = self.scheduler_options
        args = ["scheduler", "--token-stdin", "--host", str(opts.get("host", self.hosts[0])),
                "--port", str(opts.get("port", 0)),
                "--dashboard-port", str(opts.get("dashboard_port", 0))]
        if opts.get("connection_file"):
            args += ["--connection-file", str(opts["connection_file"])]
        await self._scheduler.start(args, self.token, self.security, self.timeout)
        self.scheduler_address = self._scheduler.address
        await self._start_workers([i for i in self._worker_slots
                                   for _ in range(n_workers_per_host)])

    async def _start_worker(self, index: int, queues: list[str] | None = None) -> RemoteProcess:
        host = self.hosts[index]
        remote = self._new_remote("worker", index, f"{host}-{next(self._names)}")
        opts = self.worker_options
        queues = queues or opts.get("queues")
        args = ["worker", self.scheduler_address, "--token-stdin", "--name", remote.name,
                "--nthreads", str(opts.get("nthreads", 1)), "--host", str(opts.get("host", host)),
                "--port", str(opts.get("port", 0)),
                *(["--queues", ",".join(queues)] if queues else []),
                *[arg for name in ("memory_limit", "memory_spill", "memory_pause",
                                   "memory_terminate")
                  if name in opts
                  for arg in (f"--{name.replace('_', '-')}", str(opts[name]).lower())]]
        remote.queues = queues
        try:
            await remote.start(args, self.token, self.security, self.timeout)
        except BaseException:
            await remote.stop(self.close_timeout)
            self._remotes.discard(remote)
            raise
        if self.closed:
            await remote.stop(self.close_timeout)
            raise ClusterError("this SSHCluster closed while a worker started")
        self._workers.append(remote)
        return remote

    def _remote_exited(self, remote: RemoteProcess, code: int | None) -> None:
        if self.closed:
            return
        how = "lost its SSH connection" if code is None else f"exited with code {code}"
        if remote.role == "scheduler":
            logger.error("SSHCluster: the scheduler on %s %s; the cluster no longer works. "
                         "Its last output:\n%s", remote.host, how, remote.output())
            return
        if remote in self._workers:
            self._workers.remove(remote)
        replace = not self._scheduler.exited.is_set()
        logger.warning("SSHCluster: worker %s on %s %s%s. Its last output:\n%s", remote.name,
                       remote.host, how, "; starting a replacement" if replace else "",
                       remote.output())
        task = asyncio.ensure_future(self._replace(remote, replace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, dead: RemoteProcess, replace: bool) -> None:
        await dead.stop(self.close_timeout)     # closes its connection
        self._remotes.discard(dead)
        if not replace:
            return
        for _ in range(REPLACE_ATTEMPTS):
            # the new worker may be handed the task that killed the last one and die too
            try:
                await self._start_worker(dead.index, dead.queues)
                self.restarts += 1
                return
            except Exception as e:
                if self.closed:
                    return
                logger.warning("SSHCluster: replacing worker %s on %s failed: %s",
                               dead.name, dead.host, e)
        logger.error("SSHCluster: could not replace worker %s on %s after %d attempts",
                     dead.name, dead.host, REPLACE_ATTEMPTS)

    async def _stop_worker(self, address: str | None) -> None:
        remote = next((w for w in reversed(self._workers) if address in (None, w.address)),
                      None)
        if remote is None:
            raise ValueError(f"no worker {address!r} in this cluster")
        self._workers.remove(remote)
        self._remotes.discard(remote)
        await remote.stop(self.close_timeout)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)   # they clean up first
        workers = [r for r in self._remotes if r is not self._scheduler]
        # workers first: then none of them sees the scheduler go and complains
        await asyncio.gather(*(r.stop(self.close_timeout) for r in workers),
                             return_exceptions=True)
        if self._scheduler is not None:
            await self._scheduler.stop(self.close_timeout)
        self._remotes.clear()
        self._workers.clear()

    # ------------------------------------------------------------------ public
    @property
    def workers(self) -> list[str]:
        """Addresses of the running workers."""
        return [w.address for w in list(self._workers)]

    @property
    def dashboard_link(self) -> str | None:
        return self._scheduler.dashboard_link if self._scheduler is not None else None

    def remote_processes(self) -> list[dict]:
        """Role, name, host, pid (on that host) and address of every remote process."""
        remotes = ([self._scheduler] if self._scheduler is not None else []) + list(self._workers)
        return [{"role": r.role, "name": r.name, "host": r.host, "pid": r.pid,
                 "address": r.address} for r in remotes]

    def scale(self, n: int) -> None:
        """Start or stop workers until there are ``n`` (new ones go to the least busy host);
        stops adapting, if it was."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"scale needs a non-negative int, got {n!r}")
        self._check_open()
        stop_adaptive(self)
        self._run(self._scale(n), self.timeout + self.close_timeout + 30)

    async def _scale(self, n: int) -> None:
        await self._start_workers(self._least_busy(n - len(self._workers)))
        while len(self._workers) > n:
            await self._stop_worker(None)

    def _least_busy(self, n: int) -> list[int]:
        """The worker slots for ``n`` more workers, spreading them over the hosts."""
        load = {i: 0 for i in self._worker_slots}
        for w in self._workers:
            load[w.index] += 1
        slots = []
        for _ in range(n):
            slot = min(self._worker_slots, key=load.__getitem__)
            load[slot] += 1
            slots.append(slot)
        return slots

    async def _start_workers(self, slots: list[int]) -> None:
        results = await asyncio.gather(*(self._start_worker(i) for i in slots),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def add_worker(self, host: str | None = None, queues: list[str] | None = None) -> str:
        """Start one more worker on ``host`` (one of ``hosts``; default: the least busy)."""
        self._check_open()
        queues = _check_queues(queues)
        if host is not None and host not in self.hosts:
            raise ValueError(f"add_worker: {host!r} is not one of this cluster's hosts "
                             f"{self.hosts}")

        async def add() -> RemoteProcess:
            if host is None:
                index = self._least_busy(1)[0]
            else:
                index = next((i for i in self._worker_slots if self.hosts[i] == host),
                             self.hosts.index(host))
            return await self._start_worker(index, queues)
        return self._run(add(), self.timeout + self.close_timeout + 30).address

    def retire_worker(self, address: str | None = None) -> None:
        """Stop the worker at ``address`` (default: the newest)."""
        self._check_open()
        self._run(self._stop_worker(address), self.close_timeout + 15)

    @property
    def threads_per_worker(self) -> int:
        return int(self.worker_options.get("nthreads", 1))

    def adapt(self, minimum: int = 0, maximum: int | None = None, interval: float = 1.0,
              wait_count: int = 3):
        """Grow while work waits, retire idle workers; ``maximum`` defaults to
        ``n_workers_per_host`` on each worker host. ``scale()`` ends it."""
        self._check_open()
        if maximum is None:
            maximum = max(1, self._n_workers_per_host * len(self._worker_slots))
        return restart_adaptive(self, minimum, maximum, interval, wait_count)

    def restart_workers(self, timeout: float | None = None) -> None:
        """Replace every worker by a new process on the same host (``client.restart()``)."""
        self._check_open()
        self._run(self._restart_workers(), (timeout or self.timeout) + self.close_timeout + 30)

    async def _restart_workers(self) -> None:
        old, self._workers = list(self._workers), []
        for remote in old:
            self._remotes.discard(remote)
        await asyncio.gather(*(r.stop(self.close_timeout) for r in old), return_exceptions=True)
        results = await asyncio.gather(*(self._start_worker(r.index, r.queues) for r in old),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _check_open(self) -> None:
        if self.closed:
            raise ClusterError("this SSHCluster is closed")

    def close(self) -> None:
        """Stop every remote process (terminate, then kill) and close the SSH connections."""
        stop_adaptive(self)
        with self._lock:
            if self.closed:
                return
            self.closed = True
        _open_clusters.discard(self)
        if threading.current_thread() is self._thread.thread:
            # called on our own loop (garbage collection there): finish without waiting
            self._thread.loop.create_task(self._close()).add_done_callback(
                lambda _: self._thread.loop.stop())
            return
        try:
            self._run(self._close(), 2 * self.close_timeout + 30)
        finally:
            self._thread.stop()

    def __enter__(self) -> "SSHCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"<SSHCluster {self.scheduler_address or '?'} hosts={len(self.hosts)} "
                f"workers={len(self._workers)}{' closed' if self.closed else ''}>")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(w.host)}</td><td><code>{html.escape(w.address)}"
                       f"</code></td></tr>" for w in list(self._workers))
        link = self.dashboard_link
        dash = f'<br>Dashboard: <a href="{html.escape(link)}" target="_blank">' \
               f"{html.escape(link)}</a>" if link else ""
        return (f"<div><b>SSHCluster</b>{' (closed)' if self.closed else ''}<br>Scheduler: "
                f"<code>{html.escape(str(self.scheduler_address))}</code> on "
                f"{html.escape(self.hosts[0])}{dash}<br>Workers ({len(self._workers)}):"
                f"<table>{rows}</table></div>")


def _exit_callback(cluster: SSHCluster):
    """Report exits to the cluster without keeping it alive (so ``__del__`` can run)."""
    ref = weakref.ref(cluster)

    def on_exit(remote: RemoteProcess, code: int | None) -> None:
        c = ref()
        if c is not None:
            c._remote_exited(remote, code)
    return on_exit
