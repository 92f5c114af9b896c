"""SGE (Sun/Oracle/Son of/Univa Grid Engine).

Followed: the Grid Engine manual pages qsub(1), qdel(1), qstat(1):
- ``qsub [options] [command]``: with no command file "qsub reads the script from standard
  input"; it answers ``Your job 1234 ("name") has been submitted``.
- directives "#$" (the default prefix): ``-N`` name, ``-q`` queue, ``-P`` project,
  ``-pe <parallel environment> <slots>``, ``-l h_rt=hh:mm:ss`` (hard run time), ``-l <resource
  list>``, ``-S /bin/bash`` (else the queue's shell runs the script, often csh), ``-cwd``,
  ``-j y`` (merge stderr into stdout), ``-o path``.
- ``qdel job_id...``; ``qstat -u user``: "job-ID prior name user state submit/start at queue
  slots ja-task-ID", state codes such as ``qw`` (queued, waiting), ``hqw`` (hold), ``r``
  (running), ``t`` (transferring), ``s``/``S``/``T`` (suspended), ``d`` (deleted), ``E`` (error).
  A job that ended is no longer listed.
"""

from __future__ import annotations

import getpass
import re

from .core import JobQueueCluster
from .job import DONE, PENDING, RUNNING, hms


def _state(code: str) -> str:
    if "d" in code:
        return DONE
    if any(c in code for c in "rtRsST"):
        return RUNNING
    return PENDING        # qw, hqw, Eqw (an error keeps it queued: the user sees "Eqw")


class SGECluster(JobQueueCluster):
    """Workers in Grid Engine jobs, the scheduler in this process.

    ``queue`` (``-q``), ``project`` (``-P``), ``parallel_environment``: the PE that gives a
    job ``cores`` slots on one host (default ``"smp"``; sites name theirs), ``resource_spec``:
    a ``-l`` list such as ``"h_vmem=4G,mem_free=4G"`` (memory requests differ between sites:
    ``memory`` alone sets only the workers' limits). See JobQueueCluster for the rest."""

    system = "sge"
    directive = "#$"
    job_id_variable = "JOB_ID"
    submit_command = ("qsub",)
    cancel_command = ("qdel",)

    def __init__(self, cores: int | None = None, memory: str | int | None = None,
                 processes: int | None = None, walltime: str | None = None, *,
                 queue: str | None = None, project: str | None = None,
                 parallel_environment: str = "smp", resource_spec: str | None = None,
                 **kwargs) -> None:
        self.queue, self.project = queue, project
        self.parallel_environment, self.resource_spec = parallel_environment, resource_spec
        super().__init__(cores, memory, processes, walltime, **kwargs)

    def _header(self) -> list[str]:
        d = self.directive
        lines = [f"{d} -N {self.job_name}", f"{d} -S /bin/bash", f"{d} -cwd", f"{d} -j y",
                 f"{d} -o {self._log_path('$JOB_ID')}"]
        if self.queue:
            lines.append(f"{d} -q {self.queue}")
        if self.project:
            lines.append(f"{d} -P {self.project}")
        if self.cores > 1:
            lines.append(f"{d} -pe {self.parallel_environment} {self.cores}")
        if self.resource_spec:
            lines.append(f"{d} -l {self.resource_spec}")
        if self.walltime:
            lines.append(f"{d} -l h_rt={hms(self.walltime)}")
        return lines

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat", "-u", getpass.getuser()]

    @staticmethod
    def parse_job_id(out: str) -> str:
        m = re.search(r"Your job(?:-array)? (\d+)", out) or re.fullmatch(r"\s*(\d+)\s*", out)
        if m is None:
            raise ValueError(f"qsub gave no job id: {out!r}")
        return m.group(1)

    @staticmethod
    def parse_status(out: str) -> dict[str, tuple[str, str]]:
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0].isdigit():
                states[parts[0]] = (_state(parts[4]), parts[4])
        return states
