"""LSF (IBM Spectrum LSF).

Followed: the IBM Spectrum LSF command reference (bsub, bkill, bjobs) and lsf.conf:
- ``bsub < script``: "the job script is read from standard input" and its "#BSUB" lines are
  options; it answers ``Job <1234> is submitted to queue <normal>.`` (or "to default queue").
- directives: ``-J`` name, ``-q`` queue, ``-P`` project, ``-n`` slots, ``-R "span[hosts=1]"``
  (all on one host), ``-M`` memory limit and ``-R "rusage[mem=...]"`` (in the unit of
  ``LSF_UNIT_FOR_LIMITS`` in lsf.conf, "Default: KB"), ``-W [hour:]minute`` run limit,
  ``-o path`` (``%J``: the job id).
- ``bkill job_id...``; ``bjobs -w job_id...``: "JOBID USER STAT QUEUE FROM_HOST EXEC_HOST
  JOB_NAME SUBMIT_TIME", STAT one of PEND, PSUSP, RUN, USUSP, SSUSP, DONE, EXIT, UNKWN, WAIT,
  ZOMBI; "Job <1234> is not found" for a job it no longer knows.
"""

from __future__ import annotations

import math
import os
import re
import subprocess

from .core import JobQueueCluster
from .job import DONE, PENDING, RUNNING

STATES = {"PEND": PENDING, "PSUSP": PENDING, "WAIT": PENDING, "RUN": RUNNING,
          "USUSP": RUNNING, "SSUSP": RUNNING, "UNKWN": RUNNING, "PROV": RUNNING,
          "DONE": DONE, "EXIT": DONE, "ZOMBI": DONE}
UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def site_lsf_units() -> str:
    """``LSF_UNIT_FOR_LIMITS`` of this site's lsf.conf (``$LSF_ENVDIR``), else LSF's KB."""
    path = os.path.join(os.environ.get("LSF_ENVDIR", "/etc"), "lsf.conf")
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*LSF_UNIT_FOR_LIMITS\s*=\s*(\w+)", line)
                if m and m.group(1).upper() in UNITS:
                    return m.group(1).upper()
    except OSError:
        pass
    return "KB"


class LSFCluster(JobQueueCluster):
    """Workers in LSF jobs, the scheduler in this process.

    ``queue`` (``-q``), ``project`` (``-P``), ``ncpus``/``mem``: ask for other amounts than
    cores/memory, ``lsf_units``: the unit of ``-M``/``rusage[mem]`` (default: this site's
    ``LSF_UNIT_FOR_LIMITS``, else KB). See JobQueueCluster for the rest."""

    system = "lsf"
    directive = "#BSUB"
    job_id_variable = "LSB_JOBID"
    submit_command = ("bsub",)
    cancel_command = ("bkill",)

    def __init__(self, cores: int | None = None, memory: str | int | None = None,
                 processes: int | None = None, walltime: str | None = None, *,
                 queue: str | None = None, project: str | None = None,
                 ncpus: int | None = None, mem: int | None = None,
                 lsf_units: str | None = None, **kwargs) -> None:
        self.queue, self.project, self.ncpus, self.mem = queue, project, ncpus, mem
        units = (lsf_units or site_lsf_units()).upper()
        if units not in UNITS:
            raise ValueError(f"lsf_units must be one of {', '.join(UNITS)}, got {lsf_units!r}")
        self.lsf_units = units
        super().__init__(cores, memory, processes, walltime, **kwargs)

    def _header(self) -> list[str]:
        d = self.directive
        mem = self.mem or math.ceil(self.memory / UNITS[self.lsf_units])
        lines = [f"{d} -J {self.job_name}", f"{d} -o {self._log_path('%J')}"]
        if self.queue:
            lines.append(f"{d} -q {self.queue}")
        if self.project:
            lines.append(f"{d} -P {self.project}")
        lines += [f"{d} -n {self.ncpus or self.cores}", f'{d} -R "span[hosts=1]"',
                  f"{d} -M {mem}", f'{d} -R "rusage[mem={mem}]"']
        if self.walltime:
            minutes = math.ceil(self.walltime / 60)
            lines.append(f"{d} -W {minutes // 60:02d}:{minutes % 60:02d}")
        return lines

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["bjobs", "-w", *job_ids]

    def status_unknown(self, proc: subprocess.CompletedProcess) -> bool:
        return "is not found" in (proc.stderr or "") + (proc.stdout or "")

    @staticmethod
    def parse_job_id(out: str) -> str:
        m = re.search(r"Job <(\d+)> is submitted", out)
        if m is None:
            raise ValueError(f"bsub gave no job id: {out!r}")
        return m.group(1)

    @staticmethod
    def parse_status(out: str) -> dict[str, tuple[str, str]]:
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                states[parts[0]] = (STATES.get(parts[2], RUNNING), parts[2])
        return states
