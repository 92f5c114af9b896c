"""The batch-system clusters without a batch system: the job scripts each system gets, and the
submit / status / cancel commands run against stand-ins on PATH that print what each system's
documentation shows (SLURM runs for real in tests/test_slurm.py)."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest

from nbcluster import LSFCluster, PBSCluster, SGECluster, SLURMCluster
from nbcluster.deploy.jobqueue.job import parse_walltime
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(30)

FAKE = textwrap.dedent("""\
    #!{python}
    # a batch-system command: logs its argv and stdin, answers from files the test wrote
    import json, os, sys
    d = os.environ["FAKE_BATCH"]
    name = os.path.basename(sys.argv[0])
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    with open(os.path.join(d, "log.jsonl"), "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "cmd": name, "stdin": stdin}}) + "\\n")
    out = os.path.join(d, name + ".out")
    text = open(out).read() if os.path.exists(out) else ""
    if "{{id}}" in text:
        counter = os.path.join(d, "counter")
        n = int(open(counter).read()) if os.path.exists(counter) else 1234
        open(counter, "w").write(str(n + 1))
        text = text.replace("{{id}}", str(n))
    sys.stdout.write(text)
    err = os.path.join(d, name + ".err")
    if os.path.exists(err):
        sys.stderr.write(open(err).read())
    sys.exit(int(open(os.path.join(d, name + ".rc")).read()) if os.path.exists(
        os.path.join(d, name + ".rc")) else 0)
    """)


class Fake:
    """Stand-ins for one system's commands, on PATH for the test."""

    def __init__(self, d, monkeypatch, commands) -> None:
        self.d = d
        for name in commands:
            path = d / name
            path.write_text(FAKE.format(python=sys.executable))
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("FAKE_BATCH", str(d))
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")

    def answer(self, cmd: str, out: str = "", err: str = "", rc: int = 0) -> None:
        (self.d / f"{cmd}.out").write_text(textwrap.dedent(out))
        (self.d / f"{cmd}.err").write_text(err)
        (self.d / f"{cmd}.rc").write_text(str(rc))

    def calls(self, cmd: str) -> list[dict]:
        log = self.d / "log.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [c for c in map(json.loads, lines) if c["cmd"] == cmd]


def options(tmp_path, **kwargs):
    base = dict(cores=8, memory="32GiB", processes=2, walltime="01:30:00",
                shared_temp_directory=str(tmp_path / "shared"), poll_interval=3600,
                job_extra_directives=["--extra-one"], job_script_prologue=["module load py"],
                scheduler_options={"host": "127.0.0.1", "dashboard_port": -1})
    base.update(kwargs)
    return base


# ---------------------------------------------------------------------- the scripts
def test_slurm_script(tmp_path):
    with SLURMCluster(**options(tmp_path, queue="gpu", account="proj1")) as c:
        script = c.job_script()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for line in ("#SBATCH -p gpu", "#SBATCH -A proj1", "#SBATCH -n 1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32768M", "#SBATCH -t 01:30:00",
                 f"#SBATCH -J {c.job_name}", "#SBATCH --extra-one", "module load py"):
        assert line in lines, line
    # directives come before the first command (sbatch stops reading them there)
    assert max(i for i, x in enumerate(lines) if x.startswith("#SBATCH")) < \
        lines.index("module load py")
    command = lines[-1]
    assert command.startswith(f"exec {sys.executable} -m nbcluster worker {c.scheduler_address}")
    for part in ("--token-stdin", "--nthreads 4", f"--memory-limit {16 * 2**30}",
                 "--nworkers 2", "--lifetime 5100s", "--lifetime-stagger 150s",
                 f'--name "{c.job_name}-${{SLURM_JOB_ID}}"', f"< {c.token_file}"):
        assert part in command, part
    assert c.token not in script


def test_pbs_script(tmp_path):
    with PBSCluster(**options(tmp_path, queue="workq", account="acct")) as c:
        lines = c.job_script().splitlines()
    for line in ("#PBS -q workq", "#PBS -A acct", "#PBS -l select=1:ncpus=8:mem=32768mb",
                 "#PBS -l walltime=01:30:00", f"#PBS -N {c.job_name}", "#PBS -j oe",
                 "#PBS --extra-one"):
        assert line in lines, line
    assert '--name "' + c.job_name + '-${PBS_JOBID}"' in lines[-1]
    with PBSCluster(**options(tmp_path, resource_spec="nodes=1:ppn=8,mem=32gb")) as c:
        assert "#PBS -l nodes=1:ppn=8,mem=32gb" in c.job_script().splitlines()


def test_sge_script(tmp_path):
    with SGECluster(**options(tmp_path, queue="all.q", project="p1",
                              resource_spec="h_vmem=4G")) as c:
        lines = c.job_script().splitlines()
    for line in ("#$ -q all.q", "#$ -P p1", "#$ -pe smp 8", "#$ -l h_rt=01:30:00",
                 "#$ -l h_vmem=4G", "#$ -S /bin/bash", f"#$ -N {c.job_name}", "#$ -cwd"):
        assert line in lines, line
    assert '-${JOB_ID}"' in lines[-1]


def test_lsf_script(tmp_path):
    with LSFCluster(**options(tmp_path, queue="normal", project="p1", lsf_units="MB")) as c:
        lines = c.job_script().splitlines()
    for line in ("#BSUB -q normal", "#BSUB -P p1", "#BSUB -n 8", '#BSUB -R "span[hosts=1]"',
                 "#BSUB -M 32768", '#BSUB -R "rusage[mem=32768]"', "#BSUB -W 01:30",
                 f"#BSUB -J {c.job_name}"):
        assert line in lines, line
    assert '-${LSB_JOBID}"' in lines[-1]
    with LSFCluster(**options(tmp_path, walltime="00:00:30", lsf_units="GB")) as c:
        lines = c.job_script().splitlines()
    assert "#BSUB -W 00:01" in lines and "#BSUB -M 32" in lines   # rounded up


def test_skipped_directives_and_no_walltime(tmp_path):
    with SLURMCluster(**options(tmp_path, walltime=None, processes=1,
                                job_directives_skip=["--mem"])) as c:
        script = c.job_script()
    assert "#SBATCH --mem" not in script and "#SBATCH -t" not in script
    assert "--lifetime" not in script
    assert "--nworkers" not in script


@pytest.mark.parametrize("bad, message", [
    (dict(cores=None), "needs cores="), (dict(memory=None), "memory= is required"),
    (dict(processes=9), "must not exceed cores"), (dict(walltime="1:75:00"), "walltime"),
    (dict(lifetime_margin="2h"), "lifetime_margin"), (dict(name="a b"), "name may hold"),
    (dict(job_extra_directives="--x"), "list of strings"),
    (dict(scheduler_options={"hots": "x"}), "does not take hots"),
    (dict(local_directory='/tmp/"x'), "local_directory"),
])
def test_bad_options_say_what_is_wrong(tmp_path, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SLURMCluster(**options(tmp_path, **bad))


def test_walltimes():
    assert parse_walltime("01:30:00") == 5400
    assert parse_walltime("2-00:00:00") == 2 * 86400
    assert parse_walltime("01:30") == 5400          # hours:minutes
    assert parse_walltime("90m") == 5400 and parse_walltime(60) == 60
    assert parse_walltime(None) is None


# ---------------------------------------------------------------------- the commands
SYSTEMS = {
    "pbs": (PBSCluster, ("qsub", "qstat", "qdel"), "{id}.pbs-server\n",
            """\
            Job id            Name             User              Time Use S Queue
            ----------------  ---------------- ----------------  -------- - -----
            1234.pbs-server   nbcluster-x      alice             00:00:01 R workq
            1235.pbs-ser*     nbcluster-x      alice                    0 Q workq
            """, ("qstat: Unknown Job Id 1234.pbs-server\n", 153)),
    "sge": (SGECluster, ("qsub", "qstat", "qdel"),
            'Your job {id} ("nbcluster-x") has been submitted\n',
            """\
            job-ID  prior   name       user         state submit/start at     queue            slots ja-task-ID
            -------------------------------------------------------------------------------------------------
               1234 0.55500 nbcluster- alice        r     05/01/2024 10:00:00 all.q@node1          8
               1235 0.00000 nbcluster- alice        qw    05/01/2024 10:00:01                      8
            """, ("", 0)),
    "lsf": (LSFCluster, ("bsub", "bjobs", "bkill"),
            "Job <{id}> is submitted to queue <normal>.\n",
            """\
            JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
            1234    alice   RUN   normal     login1      node1       nbcluster-x Oct 11 10:00
            1235    alice   PEND  normal     login1                  nbcluster-x Oct 11 10:00
            """, ("Job <1234> is not found\n", 255)),
}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_submit_status_replace_and_cancel(system, tmp_path, monkeypatch):
    cls, (submit, status, cancel), submitted, table, (gone_err, gone_rc) = SYSTEMS[system]
    fake = Fake(tmp_path, monkeypatch, (submit, status, cancel))
    fake.answer(submit, submitted)
    fake.answer(status, table)
    extra = {"lsf_units": "MB"} if system == "lsf" else {}
    with cls(**options(tmp_path, **extra)) as c:
        c.scale(jobs=2)
        first, second = (sorted(c.jobs))
        assert first.split(".")[0] == "1234" and second.split(".")[0] == "1235"
        calls = fake.calls(submit)
        assert len(calls) == 2 and all(call["stdin"] == c.job_script() for call in calls)
        assert c.job_counts == {"pending": 2, "running": 0}     # not looked at yet
        c.refresh_jobs()
        assert c.jobs == {first: "running", second: "pending"}
        assert c.pending_jobs == [second] and c.running_jobs == [first]
        assert "1 running, 1 pending" in repr(c) and "pending" in c._repr_html_()

        # the first job ended (walltime, an admin): it is no longer listed; a new one replaces it
        lines = textwrap.dedent(table).splitlines()
        fake.answer(status, "\n".join(x for x in lines if not x.lstrip().startswith("1234")),
                    gone_err, gone_rc)
        c.refresh_jobs()
        wait_until(lambda: len(fake.calls(submit)) == 3, "a job in its place")
        wait_until(lambda: len(c.jobs) == 2, "counted")
        third = next(j for j in c.jobs if j not in (first, second))
        assert third.split(".")[0] == "1236" and first not in c.jobs
    # close cancels the jobs it has, in one command, and nothing else
    [call] = fake.calls(cancel)
    assert sorted(call["argv"]) == sorted([second, third])


def test_slurm_commands(tmp_path, monkeypatch):
    fake = Fake(tmp_path, monkeypatch, ("sbatch", "squeue", "scancel"))
    fake.answer("sbatch", "{id}\n")
    fake.answer("squeue", "1234 RUNNING\n1235 PENDING\n")
    with SLURMCluster(**options(tmp_path)) as c:
        c.scale(3)                  # workers: 2 processes a job
        assert sorted(c.jobs) == ["1234", "1235"]
        assert fake.calls("sbatch")[0]["argv"] == ["--parsable"]
        c.refresh_jobs()
        [call] = fake.calls("squeue")
        assert "--jobs=1234,1235" in call["argv"] and "--states=all" in call["argv"]
        assert c.job_counts == {"pending": 1, "running": 1}
        c.scale(jobs=1)             # the pending job goes first
        assert list(c.jobs) == ["1234"]
        assert fake.calls("scancel")[-1]["argv"] == ["1235"]
        # every listed id unknown: squeue fails with "Invalid job id"; replaced
        fake.answer("squeue", "", "slurm_load_jobs error: Invalid job id specified\n", 1)
        c.refresh_jobs()
        wait_until(lambda: "1236" in c.jobs, "a job in its place")
    assert fake.calls("scancel")[-1]["argv"] == ["1236"]


def test_a_batch_system_that_does_not_answer_is_not_taken_for_ended_jobs(tmp_path,
                                                                          monkeypatch):
    fake = Fake(tmp_path, monkeypatch, ("sbatch", "squeue", "scancel"))
    fake.answer("sbatch", "{id}\n")
    fake.answer("squeue", "", "slurm_load_jobs error: Unable to contact slurm controller\n", 1)
    with SLURMCluster(**options(tmp_path, jobs=1)) as c:
        with pytest.raises(Exception, match="Unable to contact"):
            c.refresh_jobs()
        assert list(c.jobs) == ["1234"] and len(fake.calls("sbatch")) == 1


def test_a_submit_refused_says_why(tmp_path, monkeypatch):
    fake = Fake(tmp_path, monkeypatch, ("sbatch", "squeue", "scancel"))
    fake.answer("sbatch", "", "sbatch: error: invalid partition specified: nope\n", 1)
    with SLURMCluster(**options(tmp_path, queue="nope")) as c:
        with pytest.raises(Exception, match="invalid partition specified"):
            c.scale(jobs=1)
        assert c.jobs == {}


def test_the_token_file_is_private_and_removed_on_close(tmp_path):
    with SLURMCluster(**options(tmp_path)) as c:
        path = c.token_file
        assert open(path).read().strip() == c.token
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert not os.path.exists(path)


@pytest.mark.parametrize("line, message", [
    ("start --cores 8", "--cores is for batch jobs: add --slurm"),
    ("start --slurm --jobs 1", "--slurm needs --cores and --memory"),
    ("start --slurm --pbs", "not allowed with argument"),
    ("start --lsf --cores 2 --memory 1GB --threads 2", "not --threads"),
])
def test_the_magic_says_what_is_wrong_with_batch_options(line, message):
    pytest.importorskip("IPython")
    from IPython.core.error import UsageError
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcluster")
    try:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("cluster", line)
    finally:
        ip.run_line_magic("unload_ext", "nbcluster")


def test_adaptive_scaling_counts_whole_jobs_and_pending_ones(tmp_path, monkeypatch):
    import threading

    fake = Fake(tmp_path, monkeypatch, ("sbatch", "squeue", "scancel"))
    fake.answer("sbatch", "{id}\n")
    with SLURMCluster(**options(tmp_path)) as c:     # 2 processes a job
        stop = threading.Event()
        c._adapt_to(3, [], stop)          # 3 workers: 2 jobs
        assert len(c.jobs) == 2
        c._adapt_to(3, [], stop)          # queued jobs count: none more
        assert len(fake.calls("sbatch")) == 2
        c._adapt_to(1, [], stop)          # a queued job holds nothing: it goes first
        assert list(c.jobs) == ["1234"] and fake.calls("scancel")[-1]["argv"] == ["1235"]
        adaptive = c.adapt(minimum_jobs=2, maximum_jobs=3, interval=0.02)
        assert (adaptive.minimum, adaptive.maximum) == (4, 6)
        wait_until(lambda: len(c.jobs) == 2, "adapt up to its minimum")
        c.stop_adaptive()
