"""PBS (PBS Pro / OpenPBS; Torque reads the same directives with ``resource_spec``).

Followed: the PBS Professional Reference Guide (qsub, qdel, qstat):
- ``qsub [options] [script]``: "If you do not specify a script, qsub reads from standard
  input"; it "writes the job identifier ... to standard output", of the form
  ``sequence_number.server_name``.
- directives "#PBS": ``-N`` name, ``-q`` queue, ``-A`` account string, ``-l select=1:ncpus=N:
  mem=Mmb`` (chunk resources; size suffixes b, kb, mb, gb), ``-l walltime=hh:mm:ss``,
  ``-j oe`` (join stderr into stdout), ``-o path``.
- ``qdel job_identifier...``; ``qstat job_identifier...`` prints "Job id  Name  User  Time Use
  S  Queue" with the state letter in column S (Q queued, H held, W waiting, T transit,
  R running, E exiting, S/U suspended, B array begun, F finished; Torque: C completed), and
  "qstat: Unknown Job Id ..." on stderr for a job it no longer knows. The default display may
  cut a long job id short (``1234.pbsse*``): jobs are matched by their sequence number.
"""

from __future__ import annotations

import re
import subprocess

from .core import JobQueueCluster
from .job import DONE, PENDING, RUNNING, hms, mebibytes

STATES = {**dict.fromkeys("QHWTM", PENDING), **dict.fromkeys("RESUB", RUNNING),
          **dict.fromkeys("FXC", DONE)}


class PBSCluster(JobQueueCluster):
    """Workers in PBS jobs, the scheduler in this process.

    ``queue`` (``-q``), ``account`` (``-A``), ``resource_spec``: the ``-l`` resources of one
    job (default ``select=1:ncpus=<cores>:mem=<memory>``; Torque: e.g.
    ``"nodes=1:ppn=8,mem=32gb"``). See JobQueueCluster for the rest."""

    system = "pbs"
    directive = "#PBS"
    job_id_variable = "PBS_JOBID"
    submit_command = ("qsub",)
    cancel_command = ("qdel",)

    def __init__(self, cores: int | None = None, memory: str | int | None = None,
                 processes: int | None = None, walltime: str | None = None, *,
                 queue: str | None = None, account: str | None = None,
                 resource_spec: str | None = None, **kwargs) -> None:
        self.queue, self.account, self.resource_spec = queue, account, resource_spec
        super().__init__(cores, memory, processes, walltime, **kwargs)

    def _header(self) -> list[str]:
        d = self.directive
        lines = [f"{d} -N {self.job_name}", f"{d} -j oe",
                 f"{d} -o {self.log_directory}/"]   # a directory: PBS names the file
        if self.queue:
            lines.append(f"{d} -q {self.queue}")
        if self.account:
            lines.append(f"{d} -A {self.account}")
        spec = self.resource_spec or \
            f"select=1:ncpus={self.cores}:mem={mebibytes(self.memory)}mb"
        lines.append(f"{d} -l {spec}")
        if self.walltime:
            lines.append(f"{d} -l walltime={hms(self.walltime)}")
        return lines

    def _log_path(self, pattern: str) -> str:
        return f"{self.log_directory}/{pattern}.OU"   # what PBS calls it: "<job id>.OU"

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat", *job_ids]

    def status_unknown(self, proc: subprocess.CompletedProcess) -> bool:
        return "Unknown Job Id" in (proc.stderr or "")

    @staticmethod
    def parse_job_id(out: str) -> str:
        m = re.search(r"^\s*(\d+(?:\[\])?(?:\.\S+)?)\s*$", out, re.M)
        if m is None:
            raise ValueError(f"qsub gave no job id: {out!r}")
        return m.group(1)

    @staticmethod
    def parse_status(out: str) -> dict[str, tuple[str, str]]:
        """Keyed by sequence number (see the module's docstring)."""
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[0][:1].isdigit() and len(parts[-2]) == 1:
                states[parts[0].split(".")[0].rstrip("*")] = (STATES.get(parts[-2], RUNNING),
                                                              parts[-2])
        return states

    @staticmethod
    def status_key(job_id: str) -> str:
        return job_id.split(".")[0]
