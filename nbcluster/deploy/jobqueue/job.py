"""What every batch system shares: a submitted job, walltimes and memory as the systems write
them, running their commands, and the options the clusters check."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time

from ...config import parse_memory_limit
from ...durations import parse_duration
from ...errors import ClusterError

logger = logging.getLogger("nbcluster.deploy.jobqueue")

PENDING, RUNNING, DONE = "pending", "running", "done"
COMMAND_TIMEOUT = 60.0    # seconds a submit/cancel/status command may take


class Job:
    """One job this cluster submitted: the handle the Cluster base keeps for it.

    ``state``: "pending" (queued in the batch system), "running" or "done"; ``native``: the
    batch system's own word for it (``PENDING``, ``R``, ``qw``, ``RUN``...)."""

    def __init__(self, job_id: str, name: str) -> None:
        self.job_id = job_id
        self.name = name              # the base's spec name ("job-3")
        self.state = PENDING
        self.native = ""
        self.cancelled = False        # by this cluster: its end is no news
        self.joined = False           # one of its workers was seen by the scheduler
        self.submitted = time.time()

    @property
    def address(self) -> str:
        """What the base lists it by (a job has no address of its own)."""
        return self.job_id

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.state}{' ' + self.native if self.native else ''}>"


def parse_walltime(value) -> int | None:
    """Seconds from ``"[D-]HH:MM:SS"``, ``"HH:MM"`` (hours and minutes), seconds or a duration
    such as ``"90m"``/``"1h"``; None: no walltime (the queue's default applies)."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?\s*", value)
        if m:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
            if minutes < 60 and seconds < 60:
                total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
                if total > 0:
                    return total
    try:
        duration = parse_duration(value, "walltime")
    except (TypeError, ValueError):
        duration = -1.0
    if duration <= 0:
        raise ValueError(f"walltime must be like '01:30:00' (HH:MM:SS), '2-00:00:00', '90m' or "
                         f"seconds, and positive; got {value!r}")
    return math.ceil(duration)


def hms(seconds: int) -> str:
    """``HH:MM:SS`` (hours past 24 stay hours: every system reads that)."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def mebibytes(n: int) -> int:
    """Whole MiB, rounded up: a job asks for at least what its workers may use."""
    return max(1, math.ceil(n / 2**20))


def check_memory(memory) -> int:
    if memory is None:
        raise ValueError("memory= is required: the memory of one job, such as '16GB' (its "
                         "workers share it)")
    limit = parse_memory_limit(memory)
    if limit is None or memory == "auto":
        raise ValueError(f"memory must be an amount such as '16GB' (one job's), got {memory!r}")
    return limit


def check_count(value, what: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def check_lines(value, what: str) -> list[str]:
    """A list of lines (job_extra_directives, job_script_prologue...), each on one line."""
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of strings, got {value!r}")
    bad = [v for v in value if "\n" in v or "\r" in v]
    if bad:
        raise ValueError(f"{what}: each entry must be one line, got {bad[0]!r}")
    return list(value)


def shell_word(value: str, what: str) -> str:
    """``value`` inside double quotes: ``$VAR`` expands in the job (``$TMPDIR`` is common),
    nothing else does."""
    if not isinstance(value, str) or not value or any(c in value for c in '"`\\\n\r'):
        raise ValueError(f"{what} must be a path (``$VAR`` allowed; no quotes, backquotes, "
                         f"backslashes or newlines), got {value!r}")
    return f'"{value}"'


def run(argv: list[str], what: str, stdin: str | None = None,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a batch-system command; ClusterError naming it if it is missing or hangs."""
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, stdin=None if stdin is not None
                              else subprocess.DEVNULL)
    except FileNotFoundError:
        raise ClusterError(f"{what}: the command {argv[0]!r} is not on PATH (run this where "
                           "the batch system's commands are, e.g. a login node)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what}: {' '.join(argv)} gave no answer in {timeout:g} s") from None


def failed(proc: subprocess.CompletedProcess) -> str:
    """What a failed command said (its stderr, else its stdout), for an error message."""
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return f"exit code {proc.returncode}" + (f": {text}" if text else "")


def log_tail(path: str, lines: int = 15) -> str:
    """". The end of its log PATH:" and its last ``lines`` lines, or "" (no log, or empty)."""
    try:
        with open(path, errors="replace") as f:
            tail = f.readlines()[-lines:]
    except OSError:
        return ""
    return f". The end of its log {path}:\n" + "".join(tail) if tail else ""
