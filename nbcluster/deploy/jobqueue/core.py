"""JobQueueCluster: workers as jobs of a batch system (SLURM, PBS, SGE, LSF), the scheduler in
this process.

Built on the Cluster base (``deploy/cluster.py``): a job is what the base counts as one
"worker" (its handle is a :class:`~.job.Job`), so ``_start_worker`` submits a job and returns
at once, ``_stop_workers`` cancels jobs, and the base's replacement of a worker that ended
resubmits a job that ended (walltime, node failure, an admin's cancel). Each job runs
``python -m nbcluster worker`` with ``processes`` worker processes that share its cores and
memory; they are named ``<name>-<job id>`` so the scheduler's workers map to jobs.

A system (``slurm.py``, ``pbs.py``, ``sge.py``, ``lsf.py``) adds the header of its job script
and its three commands: ``submit_command`` (the script on stdin) and ``parse_job_id``,
``cancel_command``, ``status_command(ids)`` and ``parse_status`` (job id -> "pending",
"running" or "done"; a job not listed has ended).

The token reaches the jobs through a file only its owner can read (mode 600, in a private
directory under ``shared_temp_directory``, default ``~/.nbcluster/jobqueue``, which the
compute nodes must see: home directories are shared on most clusters), read by
``--token-stdin``: never on a command line, never in the job script.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any, ClassVar

from ...durations import parse_duration
from ...errors import ClusterError
from ..cluster import Cluster, WorkerSpec
from .job import (COMMAND_TIMEOUT, DONE, PENDING, RUNNING, Job, check_count, check_lines, check_memory, failed,
                  log_tail, logger, parse_walltime, run, shell_word)
from .scheduler_job import SchedulerJob
from .view import JobsView

SCHEDULER_OPTIONS = ("host", "port", "interface", "dashboard_port")
FAILED_JOBS = 3     # jobs in a row that end before their workers join: stop replacing them
SCHEDULER_IDLE = 600.0   # seconds a scheduler in a job waits without clients before it exits


class JobQueueCluster(JobsView, Cluster):
    """Workers in jobs of a batch system; see the module's docstring. Use a system's class
    (``SLURMCluster``, ``PBSCluster``, ``SGECluster``, ``LSFCluster``)."""

    # ---- what a system sets
    system: ClassVar[str] = ""                   # "slurm"
    directive: ClassVar[str] = ""                # "#SBATCH"
    job_id_variable: ClassVar[str] = ""          # "SLURM_JOB_ID": the job's id, in the job
    submit_command: ClassVar[tuple[str, ...]] = ()
    cancel_command: ClassVar[tuple[str, ...]] = ()

    def _header(self) -> list[str]:
        raise NotImplementedError

    def status_command(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def parse_job_id(out: str) -> str:
        raise NotImplementedError

    @staticmethod
    def parse_status(out: str) -> dict[str, tuple[str, str]]:
        """job id -> (state, the system's own word)."""
        raise NotImplementedError

    def status_unknown(self, proc: subprocess.CompletedProcess) -> bool:
        """Whether a failed status command meant "(some of) these jobs exist no more"."""
        return False

    @staticmethod
    def status_key(job_id: str) -> str:
        """How ``parse_status`` keys a job (PBS: its sequence number)."""
        return job_id

    @property
    def kind(self) -> str:
        return self.system

    def __init__(self, cores: int | None = None, memory: str | int | None = None,
                 processes: int | None = None, walltime: str | None = None, *,
                 n_workers: int = 0, jobs: int = 0, name: str | None = None,
                 job_extra_directives: list[str] | None = None,
                 job_directives_skip: list[str] | None = None,
                 job_script_prologue: list[str] | None = None,
                 worker_extra_args: list[str] | None = None,
                 python: str | None = None, local_directory: str | None = None,
                 log_directory: str | None = None, shared_temp_directory: str | None = None,
                 interface: str | None = None, scheduler_options: dict | None = None,
                 lifetime_margin: Any = "auto", lifetime_stagger: Any = "auto",
                 shebang: str = "#!/usr/bin/env bash", poll_interval: float = 5.0,
                 scheduler_in_job: bool = False, scheduler_timeout: Any = "10m",
                 security=None, token: str | None = None) -> None:
        self.closed = True    # until started: close and __del__ have nothing to do
        if cores is None:
            raise ValueError(f"{type(self).__name__} needs cores= (the cores of one job) and "
                             "memory= (the memory of one job, such as '16GB')")
        self.cores = check_count(cores, "cores")
        self.memory = check_memory(memory)
        self.processes = check_count(processes, "processes", default=1)
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) must not exceed cores "
                             f"({self.cores}): each worker process needs a core")
        self.walltime = parse_walltime(walltime)
        self.lifetime, self.lifetime_stagger = _lifetime(self.walltime, lifetime_margin,
                                                         lifetime_stagger)
        self.job_name = name or f"nbcluster-{os.urandom(3).hex()}"
        if not all(c.isalnum() or c in "-_." for c in self.job_name):
            raise ValueError(f"name may hold letters, digits, '-', '_' and '.', got {name!r}")
        self.job_extra_directives = check_lines(job_extra_directives, "job_extra_directives")
        self.job_directives_skip = check_lines(job_directives_skip, "job_directives_skip")
        self.job_script_prologue = check_lines(job_script_prologue, "job_script_prologue")
        self.worker_extra_args = check_lines(worker_extra_args, "worker_extra_args")
        self.python = python or sys.executable
        self.local_directory = local_directory and shell_word(local_directory,
                                                              "local_directory")
        self.interface = interface
        options = dict(scheduler_options or {})
        unknown = sorted(set(options) - set(SCHEDULER_OPTIONS))
        if unknown:
            raise ValueError(f"scheduler_options does not take {', '.join(unknown)} (it takes "
                             f"{', '.join(SCHEDULER_OPTIONS)})")
        self.scheduler_options = options
        self.shebang = shebang
        self.poll_interval = parse_duration(poll_interval, "poll_interval")
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        n_jobs = self._jobs_for(n_workers or None, jobs or None) if n_workers or jobs else 0
        super().__init__(threads_per_worker=max(1, self.cores // self.processes),
                         memory_limit=self.memory // self.processes, token=token,
                         security=security)
        # the token file's private directory; job logs go there too unless told otherwise
        base = os.path.expanduser(shared_temp_directory or "~/.nbcluster/jobqueue")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self._private = tempfile.mkdtemp(prefix=f"{self.job_name}-", dir=base)   # mode 700
        self.token_file = os.path.join(self._private, "token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        self.log_directory = os.path.abspath(os.path.expanduser(log_directory)) \
            if log_directory else self._private
        os.makedirs(self.log_directory, exist_ok=True)
        self._jobs: dict[str, Job] = {}        # submitted and not known to have ended
        self._jobs_lock = threading.Lock()
        self._failed_jobs = 0                  # jobs in a row that ended before joining
        self._thread: Any = None
        self.scheduler: Any = None
        self._dashboard: Any = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.scheduler_timeout = parse_duration(scheduler_timeout, "scheduler_timeout")
        # the scheduler in a job of its own (scheduler_job.py), or here (None)
        self._scheduler_job = SchedulerJob(self, SCHEDULER_IDLE) if scheduler_in_job else None
        self._start(n_jobs)

    # ------------------------------------------------------------------ sizes
    def _jobs_for(self, n: int | None = None, jobs: int | None = None, memory=None,
                  cores: int | None = None) -> int:
        """Jobs needed for ``n`` workers, or ``jobs``, or ``memory`` / ``cores`` in all."""
        given = [(k, v) for k, v in (("n", n), ("jobs", jobs), ("memory", memory),
                                     ("cores", cores)) if v is not None]
        if len(given) != 1:
            raise ValueError("give one of n (workers), jobs, memory or cores, got "
                             f"{', '.join(k for k, _ in given) or 'none'}")
        what, value = given[0]
        if what == "memory":
            return math.ceil(check_memory(value) / self.memory)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{what} must be a non-negative int, got {value!r}")
        per_job = {"n": self.processes, "jobs": 1, "cores": self.cores}[what]
        return math.ceil(value / per_job)

    # ------------------------------------------------------------------ the job script
    def job_script(self) -> str:
        """The script each job runs (the same for every job): what ``scale`` submits."""
        skip = self.job_directives_skip
        header = [line for line in self._header() if not any(s in line for s in skip)]
        header += [f"{self.directive} {d}" for d in self.job_extra_directives]
        assert self.scheduler_address is not None, "the scheduler starts first"
        job_id = "${%s}" % self.job_id_variable
        args = [self.scheduler_address, "--token-stdin",
                "--nthreads", str(self.threads_per_worker),
                "--memory-limit", str(self.memory // self.processes)]
        if self.processes > 1:
            args += ["--nworkers", str(self.processes)]
        if self.lifetime is not None:
            args += ["--lifetime", f"{self.lifetime}s"]
            if self.lifetime_stagger:
                args += ["--lifetime-stagger", f"{self.lifetime_stagger}s"]
        if self.interface:
            args += ["--interface", self.interface]
        args += self.worker_extra_args
        command = " ".join([shlex.quote(self.python), "-m", "nbcluster", "worker",
                            *map(shlex.quote, args)])
        # the name carries the job's id (known only in the job); the host is the node's name
        host = "" if self.interface else ' --host "$(hostname)"'
        lines = [self.shebang, *header, *self.job_script_prologue]
        if self.local_directory:    # the workers' scratch space (spilled results), per job
            lines += [f"export TMPDIR={self.local_directory}/{self.job_name}-{job_id}",
                      'mkdir -p "$TMPDIR"']
        if self.security is not None:
            lines += [f"export {k}={shlex.quote(v)}" for k, v in self.security.to_env().items()]
        lines.append(f"exec {command} --name \"{self.job_name}-{job_id}\"{host} "
                     f"< {shlex.quote(self.token_file)}")
        return "\n".join(lines) + "\n"

    def _log_path(self, pattern: str) -> str:
        return os.path.join(self.log_directory, f"{self.job_name}-{pattern}.out")

    # ------------------------------------------------------------------ hooks
    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        from ..local import start_inprocess_scheduler

        opts = self.scheduler_options
        if self._scheduler_job is not None:
            self.scheduler_address = self._scheduler_job.start(self.scheduler_timeout)
            self._dashboard_link = self._scheduler_job.dashboard_link()
        else:
            scheme = "tls" if self.security is not None and self.security.tls else "tcp"
            host = _scheduler_host(opts.get("host"), opts.get("interface"))
            self._thread, self.scheduler, self._dashboard = start_inprocess_scheduler(
                f"nbcluster-{self.system}", f"{scheme}://{host}:{opts.get('port', 0)}",
                self.token, security=self.security, dashboard_port=opts.get("dashboard_port", 0))
            self.scheduler_address = self.scheduler.address
            self._dashboard_link = self.scheduler.dashboard_link
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name=f"nbcluster-{self.system}-watch")
        self._watcher.start()

    def _name_for(self, host: Any) -> str:
        return f"job-{next(self._names)}"

    def _start_workers(self, specs: list[WorkerSpec], timeout: float) -> list:
        # one command each, in turn: submitting is quick, and a queue refusing the first
        # job refuses the next ones too
        results: list = []
        for spec in specs:
            try:
                results.append(self._start_worker(spec, timeout))
            except Exception as e:  # noqa: BLE001 - handed back to the base
                results.append(e)
        return results

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> Job:
        """Submit one job; returns once the batch system has it (queued, not yet running)."""
        proc = run(list(self.submit_command), "submitting a job", stdin=self.job_script())
        if proc.returncode != 0:
            raise ClusterError(f"{self.submit_command[0]} refused the job ({failed(proc)}); "
                               f"the script was:\n{self.job_script()}")
        job = Job(self.parse_job_id(proc.stdout), spec.name)
        with self._jobs_lock:
            self._jobs[job.job_id] = job
        logger.info("%s: submitted job %s", type(self).__name__, job.job_id)
        return job

    def _stop_workers(self, handles: list, grace: float) -> None:
        """Cancel these jobs (the batch system gives their workers its own grace time)."""
        with self._jobs_lock:
            ids = [j.job_id for j in handles if j.state != DONE and not j.cancelled]
            for j in handles:
                j.cancelled = True
                self._jobs.pop(j.job_id, None)
        self._cancel(ids)

    def _stop_worker(self, handle: Any, grace: float) -> None:
        self._stop_workers([handle], grace)

    def _cancel(self, ids: list[str]) -> None:
        if not ids:
            return
        proc = run([*self.cancel_command, *ids], "cancelling jobs")
        if proc.returncode != 0:   # e.g. one had just ended: said, not raised
            logger.info("%s %s: %s", self.cancel_command[0], " ".join(ids), failed(proc))

    def _stop_scheduler(self) -> None:
        self._watch_stop.set()
        if self._scheduler_job is not None:
            self._scheduler_job.stop()
        if self._thread is not None:
            try:
                if self._dashboard is not None:
                    self._dashboard.stop()
                if self.scheduler is not None:
                    self._thread.run(self.scheduler.close())
            finally:
                self._thread.stop()
        shutil.rmtree(self._private, ignore_errors=True)

    def _shutdown(self, handles: list) -> None:
        self._watch_stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(COMMAND_TIMEOUT)    # a look under way ends before the loop stops
        with self._jobs_lock:    # every job still known: counted or not (being replaced)
            handles = list({id(j): j for j in [*handles, *self._jobs.values()]}.values())
        super()._shutdown(handles)

    def _hand_over(self, addresses: list[str], timeout: float) -> None:
        """The base retires by address; a job's "address" is its id: retire its workers."""
        names = self._scheduler_workers()
        workers = [a for a, n in names.items()
                   if a in addresses or any(self._owns_id(j, n) for j in addresses)]
        super()._hand_over(workers, timeout)

    def _scheduler_lost(self) -> str | None:
        if self._scheduler_job is not None:
            return self._scheduler_job.lost()
        if self.scheduler is not None and self.scheduler.closed.is_set():
            return "the scheduler was closed"
        return None

    def _default_maximum(self) -> int:
        return max(1, len(self._running)) * self.processes

    # ------------------------------------------------------------------ watching the jobs
    def _watch(self) -> None:
        while not self._watch_stop.wait(self.poll_interval):
            try:
                if self._scheduler_job is not None:
                    self._scheduler_job.state()   # (its end is what _scheduler_lost says)
                self.refresh_jobs()
            except Exception as e:  # noqa: BLE001 - the batch system may be busy: next time
                logger.warning("%s: asking %s about its jobs failed: %s",
                               type(self).__name__, self.system, e)

    def refresh_jobs(self) -> dict[str, str]:
        """Ask the batch system how our jobs are (done every ``poll_interval`` seconds);
        jobs that ended without being cancelled here are replaced. Returns job id -> state."""
        with self._jobs_lock:
            jobs = dict(self._jobs)
        if not jobs:
            return {}
        proc = run(self.status_command(list(jobs)), "asking for the jobs' states")
        if proc.returncode != 0 and not self.status_unknown(proc):
            raise ClusterError(failed(proc))
        states = self.parse_status(proc.stdout)   # (some or none may be listed)
        joined = set(self._scheduler_workers().values())
        ended = []
        with self._jobs_lock:
            for job_id, job in jobs.items():
                state, native = states.get(self.status_key(job_id), (DONE, "no longer listed"))
                job.native = native
                if job.cancelled or job.state == DONE:
                    continue
                job.state = state
                job.joined = job.joined or any(self._owns(job, n) for n in joined)
                if state == DONE and self._jobs.pop(job_id, None) is not None:
                    ended.append(job)
        for job in ended:
            # a job whose workers never joined says something is wrong with the script (or
            # the network): after a few of those in a row, stop resubmitting
            self._failed_jobs = 0 if job.joined else self._failed_jobs + 1
            give_up = self._failed_jobs >= FAILED_JOBS
            details = self._log_tail(job) + (
                f"; {FAILED_JOBS} jobs in a row ended before their workers joined: no more "
                "are submitted in their place (see cluster.job_script(); scale() tries "
                "again)" if give_up else "")
            self._worker_exited(job, f"(job {job.job_id}) ended: {job.native}",
                                replace=not give_up, details=details)
        return {job_id: job.state for job_id, job in jobs.items()}

    def _log_tail(self, job: Job) -> str:
        return log_tail(self._log_path(job.job_id))

    # ------------------------------------------------------------------ public
    @property
    def workers(self) -> list[str]:
        """The addresses of the workers (of every job) connected to the scheduler."""
        return list(self._scheduler_workers())

    def _scheduler_workers(self) -> dict[str, str]:
        """address -> name of the workers the scheduler has (read on its loop)."""
        if self._scheduler_job is not None:
            return {} if self.closed else self._scheduler_job.workers()
        if self._thread is None or self.scheduler is None or self.closed:
            return {}

        async def read() -> dict[str, str]:
            return {a: w.name for a, w in self.scheduler.state.workers.items()}
        try:
            return self._thread.run(read(), 10)
        except RuntimeError:    # the loop stopped (closing)
            return {}

    def scale(self, n: int | None = None, jobs: int | None = None, memory=None,
              cores: int | None = None) -> None:
        """Submit or cancel jobs until there are enough for ``n`` workers (``processes`` per
        job), or ``jobs`` jobs, or ``memory``/``cores`` in all. Pending jobs are cancelled
        before running ones, newest first. Returns at once: jobs wait in the queue
        (``pending_jobs``); stops adapting."""
        target = self._jobs_for(n, jobs, memory, cores)
        self._check_open()
        self.stop_adaptive()
        with self._scaling:
            current = list(self._running)
            if target > len(current):
                self._failed_jobs = 0
                self._grow(self._new_specs(target - len(current), None), self.timeout)
            elif target < len(current):
                self._retire(self._surplus(current, len(current) - target))

    def _surplus(self, entries: list, k: int) -> list:
        """The ``k`` jobs to cancel: pending ones first, then the newest."""
        order = sorted(range(len(entries)),
                       key=lambda i: (entries[i].handle.state != PENDING, -i))
        return [entries[i] for i in order[:k]]

    def add_worker(self, queues: list[str] | None = None) -> str:
        """Submit one more job; returns its id."""
        self._check_open()
        with self._scaling:
            return self._add_one(self._new_specs(1, None)[0])

    def retire_workers(self, workers: list[str] | None = None,
                       timeout: float | None = None) -> list[str]:
        """Retire gracefully (see Cluster.retire_workers) the jobs of these ``workers``
        (worker addresses or names, or job ids; None: every job) and cancel them; returns the
        ids of the jobs."""
        if workers is not None:
            names = self._scheduler_workers()
            by_name = {n: a for a, n in names.items()}
            workers = list(dict.fromkeys(
                self.job_of(by_name.get(w, w)) or w for w in workers))
        return super().retire_workers(workers, timeout)

    def retire_worker(self, address: str | None = None) -> None:
        """Cancel the job of the worker at ``address`` (all its processes go with it);
        default: the newest job."""
        self._check_open()
        with self._scaling:
            entries = list(self._running)
            if address is None:
                chosen = self._surplus(entries, 1)
            else:
                job_id = self.job_of(address)
                chosen = [e for e in entries if e.handle.job_id in (job_id, address)]
            if not chosen:
                raise ValueError(f"no worker or job {address!r} in this cluster")
            self._retire(chosen)

    def _adapt_to(self, wanted: int, retire: list[str], stop: threading.Event) -> None:
        """Adaptive scaling in whole jobs: pending jobs count (they are on their way); a
        running job goes only when every one of its workers is idle."""
        with self._scaling:
            entries = list(self._running)
            target = math.ceil(wanted / self.processes)
            if target > len(entries) and not stop.is_set():
                self._grow(self._new_specs(target - len(entries), None), self.timeout)
                return
            surplus = len(entries) - target
            if surplus <= 0:
                return
            idle = set(retire)
            names = self._scheduler_workers()
            chosen = [e for e in entries if e.handle.state == PENDING][::-1][:surplus]
            for e in reversed(entries):
                if len(chosen) >= surplus:
                    break
                mine = [a for a, name in names.items() if self._owns(e.handle, name)]
                if e.handle.state == RUNNING and mine and idle.issuperset(mine):
                    chosen.append(e)
            if chosen and not stop.is_set():
                self._retire(chosen)

    def adapt(self, minimum: int = 0, maximum: int | None = None, interval: float = 1.0,
              wait_count: int = 3, *, minimum_jobs: int | None = None,
              maximum_jobs: int | None = None):
        """Adaptive scaling between ``minimum`` and ``maximum`` workers (or
        ``minimum_jobs``/``maximum_jobs`` jobs), in whole jobs."""
        if minimum_jobs is not None:
            minimum = check_count(minimum_jobs, "minimum_jobs") * self.processes \
                if minimum_jobs else 0
        if maximum_jobs is not None:
            maximum = check_count(maximum_jobs, "maximum_jobs") * self.processes
        return super().adapt(minimum, maximum, interval, wait_count)

    def wait_for_workers(self, n: int | None = None, timeout: float = 30.0) -> int:
        """Until the scheduler counts ``n`` workers (default: all those of the jobs
        submitted: ``processes`` per job)."""
        return super().wait_for_workers(
            len(self._running) * self.processes if n is None else n, timeout)


def _lifetime(walltime: int | None, margin, stagger) -> tuple[int | None, int]:
    """(seconds a worker lives, its random stagger): it retires (moving its results) that
    long before the walltime ends its job. "auto": 10% of the walltime, at most 5 minutes,
    staggered by half of that so a job's workers do not all leave at once."""
    if walltime is None:
        return None, 0
    if margin is None:
        return None, 0
    auto = min(300, max(1, walltime // 10))
    margin_s = auto if margin == "auto" else math.ceil(parse_duration(margin, "lifetime_margin"))
    stagger_s = margin_s // 2 if stagger == "auto" else \
        math.ceil(parse_duration(stagger, "lifetime_stagger"))
    if not 0 < margin_s < walltime or not 0 <= stagger_s < max(1, margin_s):
        raise ValueError(f"lifetime_margin must be between 0 and the walltime ({walltime} s) "
                         f"and lifetime_stagger smaller than it, got {margin!r} and "
                         f"{stagger!r}")
    return walltime - margin_s, stagger_s


def _scheduler_host(host: str | None, interface: str | None) -> str:
    """Where the scheduler listens: ``host``, the address of ``interface``, or this machine's
    name's address (what the compute nodes are most likely to reach)."""
    if host:
        return host
    if interface:
        import psutil

        addrs = psutil.net_if_addrs().get(interface)
        ipv4 = [a.address for a in addrs or () if a.family == socket.AF_INET]
        if not ipv4:
            raise ValueError(f"scheduler_options: interface {interface!r} has no IPv4 address "
                             f"(interfaces: {', '.join(sorted(psutil.net_if_addrs()))})")
        return ipv4[0]
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        logger.warning("the scheduler listens on %s (what %s resolves to): only jobs on this "
                       "machine can reach it; pass scheduler_options={'interface': 'ib0'} or "
                       "{'host': ...}", address, name)
    return address
