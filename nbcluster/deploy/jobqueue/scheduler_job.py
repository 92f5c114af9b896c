"""The scheduler as a job of its own (``SLURMCluster(..., scheduler_in_job=True)``): for sites
where the notebook's machine cannot take connections from the compute nodes, or where a
long-lived scheduler must not load a login node.

The job runs ``python -m nbcluster scheduler`` on one core, reading the cluster's token from
its private file (``--token-stdin``) and writing its address to a connection file in the same
private directory (mode 700), which this process waits for. It exits by itself once no client
has been connected for ``idle_timeout`` (the notebook died), so a lost notebook does not keep
a job of the allocation running; ``close()`` cancels it.
"""

from __future__ import annotations

import types
import os
import shlex
import time
from typing import TYPE_CHECKING, Any

from ...config import read_connection_file
from ...errors import ClusterError
from .job import DONE, failed, log_tail, logger, run

if TYPE_CHECKING:
    from .core import JobQueueCluster

SCHEDULER_MEMORY = 2 * 2**30     # what the scheduler's job asks for (at most the workers')
_PER_JOB = ("job_cpu", "job_mem", "ncpus", "mem", "resource_spec")   # systems' own amounts


class SchedulerJob:
    def __init__(self, cluster: JobQueueCluster, idle_timeout: float) -> None:
        self.cluster = cluster
        self.idle_timeout = idle_timeout
        self.connection_file = os.path.join(cluster._private, "scheduler.json")
        self.job_id: str | None = None
        self.ended = ""           # the batch system's word, once the job has ended
        self._client: Any = None

    def script(self) -> str:
        """The scheduler job's script: one core, a little memory, the workers' walltime."""
        c = self.cluster
        over: dict[str, Any] = {"job_name": f"{c.job_name}-scheduler", "cores": 1,
                                "processes": 1, "memory": min(c.memory, SCHEDULER_MEMORY)}
        over.update((attr, None) for attr in _PER_JOB if getattr(c, attr, None) is not None)
        small: Any = _Overriding(c, over)
        skip = c.job_directives_skip
        header = [line for line in small._header() if not any(s in line for s in skip)]
        header += [f"{c.directive} {d}" for d in c.job_extra_directives]
        host = c.scheduler_options.get("host")
        args = ["--port", str(c.scheduler_options.get("port", 0)),
                "--dashboard-port", str(c.scheduler_options.get("dashboard_port", 0)),
                "--connection-file", self.connection_file,
                "--idle-timeout", f"{self.idle_timeout:g}s", "--token-stdin"]
        command = " ".join([shlex.quote(c.python), "-m", "nbcluster", "scheduler",
                            *map(shlex.quote, args)])
        where = f"--host {shlex.quote(host)}" if host else '--host "$(hostname)"'
        lines = [c.shebang, *header, *c.job_script_prologue]
        if c.security is not None:
            lines += [f"export {k}={shlex.quote(v)}" for k, v in c.security.to_env().items()]
        lines.append(f"exec {command} {where} < {shlex.quote(c.token_file)}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float) -> str:
        """Submit the job and wait (while it queues and starts) for the scheduler's address."""
        c = self.cluster
        proc = run(list(c.submit_command), "submitting the scheduler's job", stdin=self.script())
        if proc.returncode != 0:
            raise ClusterError(f"{c.submit_command[0]} refused the scheduler's job "
                               f"({failed(proc)}); the script was:\n{self.script()}")
        self.job_id = c.parse_job_id(proc.stdout)
        logger.info("%s: the scheduler's job is %s", type(c).__name__, self.job_id)
        deadline = time.monotonic() + timeout
        next_look = 0.0
        while True:
            try:
                address, token = read_connection_file(self.connection_file)
                if token == c.token:
                    break
            except (OSError, ValueError, KeyError):
                pass
            now = time.monotonic()
            if now >= next_look:          # ask the batch system now and then, not each turn
                next_look = now + 2.0
                if self.state() == DONE:
                    raise ClusterError(f"the scheduler's job {self.job_id} ended before it "
                                       f"wrote its address ({self.ended}){self._log_tail()}")
            if now > deadline:
                raise ClusterError(f"the scheduler's job {self.job_id} did not start within "
                                   f"{timeout:g} s (still {self.ended or 'queued'}); raise "
                                   "scheduler_timeout, or look at the queue (squeue/qstat)")
            time.sleep(0.2)   # (waiting on another machine's file: no event to wait on)
        from ...client import Client

        self._client = Client(address, token=c.token, security=c.security,
                              set_as_default=False)
        return address

    def state(self) -> str:
        """Ask the batch system about the job: "pending", "running" or "done"."""
        c = self.cluster
        if self.job_id is None or self.ended:
            return DONE if self.ended else "pending"
        proc = run(c.status_command([self.job_id]), "asking for the scheduler job's state")
        if proc.returncode != 0 and not c.status_unknown(proc):
            return "running"          # the controller is busy: no news is taken as none
        state, native = c.parse_status(proc.stdout).get(c.status_key(self.job_id),
                                                         (DONE, "no longer listed"))
        if state == DONE:
            self.ended = native
        return state

    def workers(self) -> dict[str, str]:
        """address -> name of the scheduler's workers."""
        if self._client is None:
            return {}
        try:
            info = self._client.scheduler_info()
        except Exception:   # noqa: BLE001 - gone: no workers to speak of
            return {}
        return {a: w.get("name", a) for a, w in info["workers"].items()}

    def dashboard_link(self) -> str | None:
        try:
            return self._client.scheduler_info().get("dashboard") if self._client else None
        except Exception:   # noqa: BLE001
            return None

    def lost(self) -> str | None:
        return f"the scheduler's job {self.job_id} ended ({self.ended})" if self.ended else None

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.job_id is not None and not self.ended:
            self.cluster._cancel([self.job_id])
            self.ended = "cancelled"

    def _log_tail(self) -> str:
        c = self.cluster
        return log_tail(os.path.join(c.log_directory, f"{c.job_name}-scheduler-{self.job_id}.out"))


class _Overriding:
    """The cluster as the system's header sees it, with a few values changed (one core, the
    scheduler's name). Not a copy: a copied cluster would close the real one's jobs and
    files when it is collected."""

    def __init__(self, base: Any, over: dict[str, Any]) -> None:
        self.__dict__.update(over)
        self._base = base

    def __getattr__(self, name: str) -> Any:
        value = getattr(type(self._base), name, None)
        if isinstance(value, types.FunctionType):   # its methods see the changed values too
            return types.MethodType(value, self)
        return getattr(self._base, name)
