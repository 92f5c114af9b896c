"""The %cluster magic in an IPython shell (run_line_magic / run_cell)."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("IPython")
from IPython.core.error import UsageError  # noqa: E402
from IPython.testing import globalipapp  # noqa: E402

from nbcluster import Client, LocalCluster  # noqa: E402


def _shell():
    """The test shell (``start_ipython`` makes it once and returns None after that)."""
    globalipapp.start_ipython()
    return globalipapp.get_ipython()


@pytest.fixture
def ip():
    shell = _shell()
    shell.run_line_magic("load_ext", "nbcluster")
    yield shell
    shell.run_line_magic("unload_ext", "nbcluster")
    for name in ("client", "c2"):
        shell.user_ns.pop(name, None)


def test_import_nbcluster_stays_light():
    import subprocess

    code = ("import sys, nbcluster; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('IPython', 'ipywidgets', 'ipykernel', 'comm') or m.startswith('nbcluster.jupyter')]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_ext_registers_cluster_and_help_explains_every_subcommand(ip):
    magic = ip.find_line_magic("cluster")
    assert magic is not None
    doc = magic.__doc__
    for word in ("start", "connect", "status", "scale", "restart", "stop", "dashboard", "--workers",
                 "--threads", "--no-processes", "--memory-limit", "--name", "lazy_magics"):
        assert word in doc, word


@pytest.mark.parametrize("line, message", [
    ("bogus", "unknown subcommand 'bogus'"),
    ("start -n many", "invalid int value: 'many'"),
    ("start --wat", "unrecognized arguments: --wat"),
    ("start --name 1x", "--name must be a Python identifier"),
    ("start --threads 0", "--threads must be >= 1"),
    ("scale", "the following arguments are required: N"),
    ("status", "no cluster: start one with %cluster start"),
    ("restart", "no cluster: start one with %cluster start"),
    ("start 'unclosed", "No closing quotation"),
])
def test_mistakes_are_one_line_usage_errors(ip, capsys, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("cluster", line)
    ip.run_cell(f"%cluster {line}")                  # what a notebook user sees
    err = capsys.readouterr().err.strip()
    assert err.startswith("UsageError: %cluster") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_start_status_scale_stop(ip, capsys):
    assert ip.run_line_magic("cluster", "start -n 1 --threads 2 --no-processes "
                                        "--memory-limit 1GB") is None
    client = ip.user_ns["client"]
    assert isinstance(client, Client)
    assert client.submit(sum, [1, 2]).result() == 3
    out = capsys.readouterr().out
    assert "in-process" in out and "Workers: 1, threads: 2" in out    # the cluster, as text
    ip.run_line_magic("cluster", "status")
    out = capsys.readouterr().out
    assert "Tasks by state:" in out and "/ 1.0 GB" in out
    assert "Dashboard: http://127.0.0.1:" in out and out.rstrip().endswith("/status")
    ip.run_line_magic("cluster", "scale 2   # a comment, as in Python, is not an argument")
    assert "2 workers" in capsys.readouterr().out
    assert len(client.cluster.workers) == 2
    held = client.submit(sum, [3, 4])
    assert held.result() == 7
    ip.run_line_magic("cluster", "restart")
    assert "restarted: 2 workers, every future cancelled" in capsys.readouterr().out
    assert held.status == "cancelled" and client.submit(sum, [1]).result() == 1
    ip.run_line_magic("cluster", "dashboard")     # not in a kernel: the link only
    assert "/status" in capsys.readouterr().out
    with pytest.raises(UsageError, match="already running"):
        ip.run_line_magic("cluster", "start")
    ip.run_line_magic("cluster", "stop")
    assert "stopped inproc://" in capsys.readouterr().out
    assert "client" not in ip.user_ns
    assert client.cluster.closed
    ip.run_line_magic("cluster", "stop")
    assert "no cluster to stop" in capsys.readouterr().out


def test_connect_to_a_running_scheduler_and_name(ip, capsys):
    with LocalCluster(n_workers=1, processes=False) as cluster:
        ip.run_line_magic("cluster", f"connect {cluster.scheduler_address} --token "
                                     f"{cluster.token} --name c2")
        c2 = ip.user_ns["c2"]
        assert c2.submit(sum, [2, 3]).result() == 5
        with pytest.raises(UsageError, match="did not start"):
            ip.run_line_magic("cluster", "scale 3")
        ip.run_line_magic("cluster", "stop")          # closes the client, not the cluster
        assert not cluster.closed and "c2" not in ip.user_ns
        with Client(cluster) as other:
            assert other.submit(sum, [1, 1]).result() == 2
    with pytest.raises(UsageError, match="could not connect to tcp://127.0.0.1:9"):
        ip.run_line_magic("cluster", "connect tcp://127.0.0.1:9 --token x")


def test_unload_stops_the_cluster_it_started(ip):
    ip.run_line_magic("cluster", "start -n 1 --no-processes")
    client = ip.user_ns["client"]
    ip.run_line_magic("unload_ext", "nbcluster")
    assert ip.find_line_magic("cluster") is None
    assert "client" not in ip.user_ns and client.cluster.closed
    ip.run_line_magic("load_ext", "nbcluster")        # loads again for the fixture's unload


def test_html_reprs_for_futures_lists_client_and_cluster(ip, monkeypatch):
    fmt = ip.display_formatter.formatters["text/html"]
    monkeypatch.setattr(fmt, "enabled", True)         # as in a kernel (off in a terminal)
    ip.run_line_magic("cluster", "start -n 1 --no-processes")
    client = ip.user_ns["client"]
    futures = client.map(lambda x: x, range(3))
    client.gather(futures)
    assert "3 futures" in fmt(futures) and "finished: 3" in fmt(futures)
    assert fmt([1, 2]) is None                        # other lists are left alone
    assert "finished" in fmt(futures[0])              # the engine's Future repr
    html = fmt(client)
    assert "nbcluster Client" in html and "<b>1</b> workers" in html
    assert "LocalCluster" in fmt(client.cluster) and "<b>1</b> workers" in fmt(client.cluster)
    ip.run_line_magic("cluster", "stop")
    assert "nbcluster Client</b>: closed" in fmt(client)     # closed, in so many words
    assert "Dashboard" not in fmt(client)             # and no link to a dashboard now gone


def test_a_hand_made_client_is_adopted_and_replaced_by_start(ip, capsys):
    with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as mine:
        ip.run_cell("x = 1")                          # pre_run_cell adopts the default client
        ip.run_line_magic("cluster", "status")
        assert cluster.scheduler_address in capsys.readouterr().out
        ip.run_line_magic("cluster", "start -n 1 --no-processes")
        assert ip.user_ns["client"] is not mine and mine.submit(sum, [1]).result() == 1
        ip.run_line_magic("cluster", "stop")


def test_lazy_magics_config_loads_the_extension_on_first_use(capsys):
    from IPython.core.magic import MagicsManager

    shell = _shell()
    mm: MagicsManager = shell.magics_manager
    shell.run_line_magic("unload_ext", "nbcluster")   # in case another test left it loaded
    # IPython 9 keeps its own magics there too (and find_line_magic loads lazy ones): add ours
    saved = dict(mm.lazy_magics)
    mm.lazy_magics = {**saved, "cluster": "nbcluster"}
    try:
        assert "cluster" not in mm.magics["line"]
        assert "nbcluster" not in shell.extension_manager.loaded
        shell.run_line_magic("cluster", "")            # loads nbcluster on first use
        assert "%cluster start" in capsys.readouterr().out
        assert "nbcluster" in shell.extension_manager.loaded
        assert shell.find_line_magic("cluster") is not None
    finally:
        mm.lazy_magics = saved
        shell.run_line_magic("unload_ext", "nbcluster")


def test_after_cluster_stop_a_kept_client_says_closed_and_scale_reports_the_workers(ip, capsys,
                                                                                    monkeypatch):
    fmt = ip.display_formatter.formatters["text/html"]
    monkeypatch.setattr(fmt, "enabled", True)
    ip.run_line_magic("cluster", "start -n 1 --no-processes --memory-limit 1GB")
    kept = ip.user_ns["client"]                       # held under another name too
    ip.run_line_magic("cluster", "scale 3")
    assert "nbcluster: 3 workers" in capsys.readouterr().out
    assert "<b>3</b> workers" in fmt(kept) and len(kept.scheduler_info()["workers"]) == 3
    ip.run_line_magic("cluster", "stop")
    assert repr(kept).endswith(" closed>") and kept.closed
    assert "closed" in fmt(kept) and "<b>3</b> workers" not in fmt(kept)


def test_start_with_a_journal_lists_its_schedules(ip, capsys, tmp_path):
    path = str(tmp_path / "nb.sqlite")
    ip.run_line_magic("cluster", f"start -n 1 --no-processes --journal {path}")
    client = ip.user_ns["client"]
    assert client.scheduler_info()["journal"] == path
    client.schedule(sum, [1, 2], cron="0 0 * * *", name="nightly")
    capsys.readouterr()
    ip.run_line_magic("cluster", "status")
    assert "Schedule nightly: cron 0 0 * * *, next 00:00:00 UTC" in capsys.readouterr().out
    ip.run_line_magic("cluster", "stop")
