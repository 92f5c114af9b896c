"""What a batch-system cluster shows: its jobs, pending (queued) or running, and their workers."""

from __future__ import annotations

import html
from typing import Any

from .job import PENDING, RUNNING, Job


class JobsView:
    """Mixed into JobQueueCluster (which provides ``_running``, ``_scheduler_workers``...)."""

    _running: list
    job_name: str
    processes: int
    threads_per_worker: int
    scheduler_address: str | None

    def _scheduler_workers(self) -> dict[str, str]:
        raise NotImplementedError

    def _owns(self, job: Job, worker_name: str) -> bool:
        return self._owns_id(job.job_id, worker_name)

    def _owns_id(self, job_id: str, worker_name: str) -> bool:
        """Whether the worker so named runs in job ``job_id`` (named ``<name>-<job id>``,
        with ``-<i>`` after it when a job runs several processes)."""
        prefix = f"{self.job_name}-{job_id}"
        return worker_name == prefix or worker_name.startswith(prefix + "-")

    @property
    def jobs(self) -> dict[str, str]:
        """job id -> "pending" (queued in the batch system) or "running", for every job the
        cluster has (as of the last look, every ``poll_interval`` seconds)."""
        return {e.handle.job_id: e.handle.state for e in list(self._running)}

    @property
    def pending_jobs(self) -> list[str]:
        """The ids of the jobs waiting in the batch system's queue."""
        return [j for j, s in self.jobs.items() if s == PENDING]

    @property
    def running_jobs(self) -> list[str]:
        """The ids of the jobs the batch system runs (their workers may still be starting)."""
        return [j for j, s in self.jobs.items() if s == RUNNING]

    @property
    def job_counts(self) -> dict[str, int]:
        """``{"pending": n, "running": m}``: what the notebook's views show."""
        states = list(self.jobs.values())
        return {"pending": states.count(PENDING), "running": states.count(RUNNING)}

    def job_of(self, address: str) -> str | None:
        """The id of the job the worker at ``address`` runs in (None: not one of ours)."""
        name = self._scheduler_workers().get(address)
        if name is None:
            return None
        return next((e.handle.job_id for e in list(self._running)
                     if self._owns(e.handle, name)), None)

    def _job_rows(self) -> list[tuple[Job, list[str]]]:
        names = self._scheduler_workers()
        return [(e.handle, sorted(a for a, n in names.items() if self._owns(e.handle, n)))
                for e in list(self._running)]

    def __repr__(self) -> str:
        status: Any = getattr(self, "status", "")
        counts = self.job_counts
        return (f"<{type(self).__name__} {self.scheduler_address or '?'} jobs: "
                f"{counts['running']} running, {counts['pending']} pending; "
                f"workers={len(self._scheduler_workers())} threads={self.threads_per_worker}"
                f"{'' if status == 'running' else ' ' + str(status)}>")

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(job.job_id)}</td><td>{esc(job.state)}</td>"
            f"<td>{esc(job.native)}</td><td>{len(workers)} / {self.processes}</td>"
            f"<td>{'<br>'.join(f'<code>{esc(a)}</code>' for a in workers)}</td></tr>"
            for job, workers in self._job_rows())
        counts = self.job_counts
        link: Any = getattr(self, "dashboard_link", None)
        dash = (f"<br>Dashboard: <a href='{esc(link, quote=True)}' target='_blank'>"
                f"{esc(link)}</a>" if link else "")
        status: Any = getattr(self, "status", "")
        return (f"<div><b>{type(self).__name__}</b>"
                f"{'' if status == 'running' else ' ' + esc(str(status))}<br>Scheduler: "
                f"<code>{esc(str(self.scheduler_address))}</code>{dash}<br>"
                f"Jobs: <b>{counts['running']}</b> running, <b>{counts['pending']}</b> pending "
                f"(queued); {self.processes} worker(s) of {self.threads_per_worker} threads "
                f"each per job<table><tr><th>job</th><th>state</th><th>batch system</th>"
                f"<th>workers</th><th>addresses</th></tr>{rows}</table></div>")
