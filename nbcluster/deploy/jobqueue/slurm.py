"""SLURM: ``sbatch``, ``scancel``, ``squeue``.

Followed: the sbatch, scancel and squeue manual pages of SLURM 22.05 (slurm.schedmd.com):
- ``sbatch [OPTIONS...] [script]``: "sbatch will read the script from standard input" when
  no file is given; ``--parsable``: "Outputs only the job id number and the cluster name if
  present. The values are separated by a semicolon."
- directives "#SBATCH" before the first command: ``-J/--job-name``, ``-p/--partition``,
  ``-A/--account``, ``-n/--ntasks``, ``-c/--cpus-per-task``, ``--mem=<size>[units]`` ("Default
  units are megabytes", suffix M), ``-t/--time`` ("hours:minutes:seconds"), ``-o/--output``
  (``%j``: "Job ID").
- ``scancel job_id...``; ``squeue --noheader --states=all --jobs=<list> --format="%i %T"``
  (``%i`` job id, ``%T`` "Job state in extended form"; with ``--states=all`` ended jobs stay
  listed for MinJobAge seconds); a list of only unknown ids is an error: "Invalid job id".
"""

from __future__ import annotations

import subprocess

from .core import JobQueueCluster
from .job import DONE, PENDING, RUNNING, hms, mebibytes

# squeue's extended states (JOB STATE CODES in squeue(1))
STATES = {
    **dict.fromkeys(("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"),
                    PENDING),
    **dict.fromkeys(("RUNNING", "CONFIGURING", "SUSPENDED", "RESIZING", "SIGNALING",
                     "STAGE_OUT", "STOPPED"), RUNNING),
    **dict.fromkeys(("COMPLETING", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED",
                     "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT",
                     "REVOKED"), DONE),
}


class SLURMCluster(JobQueueCluster):
    """Workers in SLURM jobs, the scheduler in this process.

    ``cores``, ``memory``: one job's (``--cpus-per-task``, ``--mem``); ``processes``: worker
    processes per job (they share its cores and memory); ``walltime``: ``"01:00:00"``;
    ``queue``: the partition (``-p``); ``account`` (``-A``); ``job_cpu``/``job_mem``: ask for
    other amounts than cores/memory. See JobQueueCluster for the rest.

    >>> cluster = SLURMCluster(cores=8, memory="32GB", walltime="01:00:00", queue="normal")
    >>> cluster.scale(jobs=4)
    """

    system = "slurm"
    directive = "#SBATCH"
    job_id_variable = "SLURM_JOB_ID"
    submit_command = ("sbatch", "--parsable")
    cancel_command = ("scancel",)

    def __init__(self, cores: int | None = None, memory: str | int | None = None,
                 processes: int | None = None, walltime: str | None = None, *,
                 queue: str | None = None, account: str | None = None,
                 job_cpu: int | None = None, job_mem: str | None = None, **kwargs) -> None:
        self.queue, self.account = queue, account
        self.job_cpu, self.job_mem = job_cpu, job_mem
        super().__init__(cores, memory, processes, walltime, **kwargs)

    def _header(self) -> list[str]:
        d = self.directive
        lines = [f"{d} -J {self.job_name}", f"{d} -o {self._log_path('%j')}"]
        if self.queue:
            lines.append(f"{d} -p {self.queue}")
        if self.account:
            lines.append(f"{d} -A {self.account}")
        lines += [f"{d} -n 1", f"{d} --cpus-per-task={self.job_cpu or self.cores}"]
        lines.append(f"{d} --mem={self.job_mem or f'{mebibytes(self.memory)}M'}")
        if self.walltime:
            lines.append(f"{d} -t {hms(self.walltime)}")
        return lines

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
                "--format=%i %T"]

    def status_unknown(self, proc: subprocess.CompletedProcess) -> bool:
        return "Invalid job id" in (proc.stderr or "")

    @staticmethod
    def parse_job_id(out: str) -> str:
        job_id = out.strip().split(";")[0].strip()
        if not job_id.isdigit():
            raise ValueError(f"sbatch --parsable gave no job id: {out!r}")
        return job_id

    @staticmethod
    def parse_status(out: str) -> dict[str, tuple[str, str]]:
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                # "CANCELLED by 0" is one state
                states[parts[0]] = (STATES.get(parts[1], RUNNING), parts[1])
        return states
