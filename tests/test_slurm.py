"""SLURMCluster against a real SLURM (one node: this machine; `.ci/slurm start` sets it up).

Skipped when there is no ``sbatch`` or no controller answers, except under CI (the ``CI``
environment variable set), where that is a failure: CI must not skip these silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from operator import add

import pytest

from nbcluster import Client, SLURMCluster
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def _slurm_missing() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (apt-get install slurm-wlm munge; .ci/slurm start)"
    try:
        proc = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True,
                              timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"squeue did not answer: {e}"
    if proc.returncode != 0:
        return (f"no SLURM controller answers (squeue: {proc.stderr.strip()}); start one "
                "with .ci/slurm start and export SLURM_CONF")
    return None


@pytest.fixture(scope="module")
def slurm():
    missing = _slurm_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests: {missing}")
        pytest.skip(missing)


def squeue(*job_ids: str) -> dict[str, str]:
    """job id -> state of these jobs as SLURM lists them (ended ones for a while)."""
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T",
                          f"--jobs={','.join(job_ids)}"], capture_output=True, text=True).stdout
    return dict(line.split()[:2] for line in out.splitlines() if line.strip())


def live(*job_ids: str) -> set[str]:
    return {j for j, s in squeue(*job_ids).items()
            if s in ("PENDING", "RUNNING", "CONFIGURING")}


def make(tmp_path, **kwargs) -> SLURMCluster:
    options = dict(cores=1, memory="400MB", poll_interval=0.3, interface="lo",
                   shared_temp_directory=str(tmp_path),
                   scheduler_options={"host": "127.0.0.1", "dashboard_port": -1})
    options.update(kwargs)
    return SLURMCluster(**options)


def test_jobs_run_tasks_and_scale_up_and_down(slurm, tmp_path):
    with make(tmp_path) as cluster, Client(cluster, set_as_default=False) as client:
        assert "#SBATCH --cpus-per-task=1" in cluster.job_script()
        cluster.scale(jobs=2)
        first = list(cluster.jobs)
        assert len(first) == 2 and live(*first) == set(first)
        client.wait_for_workers(2, timeout=30)
        wait_until(lambda: cluster.job_counts == {"pending": 0, "running": 2}, "2 running")
        assert sorted(cluster.job_of(a) for a in cluster.workers) == sorted(first)
        assert client.gather(client.map(add, range(20), range(20))) == [2 * i for i in range(20)]
        # the token is in a private file, not in the script SLURM keeps
        mode = os.stat(cluster.token_file).st_mode & 0o777
        assert mode == 0o600 and cluster.token not in cluster.job_script()

        cluster.scale(1)      # workers: one job of one process
        assert len(cluster.jobs) == 1
        gone = set(first) - set(cluster.jobs)
        wait_until(lambda: not live(*gone), "the surplus job cancelled")
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, "one worker left")
        assert client.submit(add, 1, 2).result(timeout=10) == 3


def test_a_job_that_ends_is_replaced_and_close_cancels_only_its_own(slurm, tmp_path):
    other = subprocess.run(["sbatch", "--parsable", "--hold", "-J", "not-nbcluster",
                            "--wrap", "sleep 600"], capture_output=True, text=True,
                           check=True).stdout.strip().split(";")[0]
    try:
        with make(tmp_path, jobs=1) as cluster, Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=30)
            [job] = cluster.jobs
            subprocess.run(["scancel", job], check=True)       # as an admin would
            wait_until(lambda: cluster.jobs and job not in cluster.jobs, "a new job", 20)
            [new] = cluster.jobs
            wait_until(lambda: cluster.workers and cluster.job_of(cluster.workers[0]) == new,
                       "the new job's worker joined", 30)
            assert cluster.restarts == 1
            assert client.submit(add, 2, 3).result(timeout=10) == 5
        assert not live(new)
        assert live(other) == {other}, "close cancelled a job it had not submitted"
    finally:
        subprocess.run(["scancel", other])


def test_a_worker_retires_before_its_walltime_and_its_job_is_replaced(slurm, tmp_path):
    """walltime 1 minute, margin 55 s: the worker retires after 5 s (``--lifetime``), its
    job ends, and a new job takes its place (a job SLURM kills at its walltime is replaced
    the same way: the job ends, as with scancel in the test above)."""
    with make(tmp_path, jobs=1, walltime="00:01:00", lifetime_margin="55s",
              lifetime_stagger=0) as cluster, Client(cluster, set_as_default=False) as client:
        script = cluster.job_script()
        assert "#SBATCH -t 00:01:00" in script and "--lifetime 5s" in script
        client.wait_for_workers(1, timeout=30)
        [job] = cluster.jobs
        wait_until(lambda: cluster.jobs and job not in cluster.jobs, "the job replaced", 30)
        assert squeue(job).get(job) in (None, "COMPLETED", "COMPLETING")   # it left, not killed
        [new] = cluster.jobs
        wait_until(lambda: cluster.workers and cluster.job_of(cluster.workers[0]) == new,
                   "the new job's worker joined", 30)
        assert client.submit(add, 2, 3).result(timeout=10) == 5


def test_the_magic_starts_jobs_and_status_and_widget_show_them(slurm, tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    from IPython.testing import globalipapp

    from nbcluster.jupyter.widgets import ClusterWidget

    monkeypatch.setenv("HOME", str(tmp_path))     # the token file goes under ~/.nbcluster
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcluster")
    try:
        ip.run_line_magic("cluster", "start --slurm --jobs 1 --cores 1 --memory 400MB "
                          "--walltime 00:10:00 --name slurm_client")
        client = ip.user_ns["slurm_client"]
        magics = ip.magics_manager.registry["ClusterMagics"]
        cluster = magics._session.cluster
        assert isinstance(cluster, SLURMCluster) and "#SBATCH -t 00:10:00" in \
            cluster.job_script()
        client.wait_for_workers(1, timeout=30)
        cluster.refresh_jobs()
        jobs = list(cluster.jobs)
        ip.run_line_magic("cluster", "status")
        assert "Jobs: 1 running, 0 pending (queued)" in magics._session.snapshot().text()
        view = ClusterWidget(magics._session, poll=False)
        assert "jobs: 1 running, 0 pending" in view.table.value
        view.close()
        ip.run_line_magic("cluster", "stop")
        assert not live(*jobs)
    finally:
        ip.run_line_magic("cluster", "stop")
        ip.run_line_magic("unload_ext", "nbcluster")
        ip.user_ns.pop("slurm_client", None)


def test_the_scheduler_in_a_job_of_its_own(slurm, tmp_path):
    with make(tmp_path, scheduler_in_job=True, scheduler_timeout="60s") as cluster, \
            Client(cluster, set_as_default=False) as client:
        scheduler_job = cluster._scheduler_job.job_id
        assert live(scheduler_job) == {scheduler_job}
        assert cluster.scheduler is None            # not in this process
        info = client.scheduler_info()
        assert info["pid"] != os.getpid()
        cluster.scale(jobs=1)
        client.wait_for_workers(1, timeout=30)
        assert client.submit(add, 20, 22).result(timeout=20) == 42
        assert [cluster.job_of(a) for a in cluster.workers] == list(cluster.jobs)
        script = cluster._scheduler_job.script()
        assert "nbcluster scheduler" in script and "--idle-timeout" in script
        assert "--cpus-per-task=1" in script and cluster.token not in script
        worker_job = list(cluster.jobs)[0]
    wait_until(lambda: not live(scheduler_job, worker_job), "both jobs to end")
