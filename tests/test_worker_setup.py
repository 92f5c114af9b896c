"""Worker setup that survives replacement (issue 17): register_worker_setup and upload_file
reach the workers there are and every worker that joins later (a replacement of a killed one,
one added by scale-up) before it takes a task; version mismatches are named at connect."""

from __future__ import annotations

import logging
import os
import signal
import zipfile

import pytest

from nbcluster import Client, LocalCluster
from nbcluster import versions as versions_module
from nbcluster.server import setup_requests
from nbcluster.testing.polling import wait_until

pytestmark = pytest.mark.timeout(30)


def mark_setup():
    os.environ["NBC_TEST_SETUP"] = f"done in {os.getpid()}"
    return os.getpid()


def setup_mark():
    return os.environ.get("NBC_TEST_SETUP")


def broken_setup():
    raise ValueError("no GPU here")


def new_worker(cluster, before, n):
    """The one worker not in ``before``, once the cluster runs ``n``."""
    wait_until(lambda: len(cluster.workers) == n and len(set(cluster.workers) - before) == 1,
               "a new worker", timeout=15)
    (address,) = set(cluster.workers) - before
    return address


def test_a_setup_runs_on_current_workers_and_on_a_replacement_of_a_killed_one():
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        pids = client.register_worker_setup(mark_setup)
        assert sorted(pids.values()) == sorted(cluster.worker_pids().values())
        assert set(client.run(setup_mark).values()) == {f"done in {p}" for p in pids.values()}
        victim = cluster.workers[0]
        before = set(cluster.workers)
        os.kill(cluster.worker_pids()[victim], signal.SIGKILL)
        replacement = new_worker(cluster, before, 2)
        # its first task already sees the setup's effect: setups run before any task
        mark = client.submit(setup_mark, workers=[replacement]).result(timeout=10)
        assert mark == f"done in {cluster.worker_pids()[replacement]}"


def test_a_failing_setup_raises_naming_the_worker_and_is_logged_for_later_ones(caplog):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:
        with pytest.raises(ValueError, match="no GPU here") as info:
            client.register_worker_setup(broken_setup, name="gpu")
        assert any("worker setup 'gpu' failed on worker" in n for n in info.value.__notes__)
        with caplog.at_level(logging.ERROR, "nbcluster"):
            address = cluster.add_worker()
            wait_until(lambda: client.scheduler_info()["workers"][address]["identity"]
                       .get("setup_errors"), "the new worker's setup to fail")
        errors = client.scheduler_info()["workers"][address]["identity"]["setup_errors"]
        assert errors == ["ValueError: no GPU here"]
        assert any("joined after it was registered" in r.getMessage() for r in caplog.records)
        assert client.submit(sum, [1, 2]).result(timeout=10) == 3    # it takes tasks anyway


def value_of(module):
    import importlib

    return importlib.import_module(module).VALUE


def test_upload_file_reaches_current_and_scaled_up_workers_and_replaces_a_module(tmp_path):
    mod = tmp_path / "nbc_uploaded_mod.py"
    mod.write_text("VALUE = 1\n")
    pkg = tmp_path / "nbc_uploaded_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .inner import VALUE\n")
    (pkg / "inner.py").write_text("VALUE = 'pkg'\n")
    archive = tmp_path / "nbc_zipped.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("nbc_zipped_mod.py", "VALUE = 'zip'\n")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        assert list(client.upload_file(mod).values()) == [["nbc_uploaded_mod"]]
        client.upload_file(pkg)
        client.upload_file(archive)
        before = set(cluster.workers)
        cluster.scale(2)
        added = new_worker(cluster, before, 2)
        for name, expected in [("nbc_uploaded_mod", 1), ("nbc_uploaded_pkg", "pkg"),
                               ("nbc_zipped_mod", "zip")]:
            assert client.submit(value_of, name, workers=[added]).result(timeout=10) == expected
        mod.write_text("VALUE = 22\n")           # the same name again: imported again
        client.upload_file(mod)
        assert set(client.run(value_of, "nbc_uploaded_mod").values()) == {22}
        assert client.submit(value_of, "nbc_uploaded_mod", workers=[added],
                             pure=False).result(timeout=10) == 22


def test_upload_file_refuses_what_it_cannot_ship(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "notpkg").mkdir()
    with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:
        with pytest.raises(ValueError, match=r"\.py, \.zip or \.egg"):
            client.upload_file(tmp_path / "data.csv")
        with pytest.raises(ValueError, match="not a package"):
            client.upload_file(tmp_path / "notpkg")
        with pytest.raises(FileNotFoundError):
            client.upload_file(tmp_path / "missing.py")
        with pytest.raises(TypeError, match="takes a function"):
            client.register_worker_setup("not callable")


def test_a_version_mismatch_is_named_at_connect(monkeypatch):
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        mine = versions_module.versions()
        monkeypatch.setitem(versions_module._MINE, "cloudpickle", "0.0.1")
        with pytest.warns(UserWarning) as caught:
            Client(cluster).close()
        text = [str(w.message) for w in caught]
        assert any("scheduler" in t and f"cloudpickle 0.0.1 here, {mine['cloudpickle']} on "
                   "the scheduler" in t for t in text), text
        assert any("1 worker (such as tcp://" in t for t in text), text
        monkeypatch.setitem(versions_module._MINE, "cloudpickle", mine["cloudpickle"])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")     # the same versions: no warning
            Client(cluster).close()


def test_the_scheduler_logs_a_worker_joining_with_other_versions(caplog):
    theirs = {**versions_module.versions(), "python": "2.7"}
    with caplog.at_level(logging.WARNING, "nbcluster.scheduler"):
        setup_requests.check_versions("tcp://w:1", {"versions": theirs})
    assert "tcp://w:1 joined with other versions" in caplog.text
    assert "python" in caplog.text and "2.7 on the worker" in caplog.text


def submits_from_inside(n):
    import nbcluster

    client = nbcluster.get_client()
    return client.submit(sum, list(range(n))).result()


def test_the_tasks_client_of_an_in_process_worker_closes_with_it():
    # (the autouse check: every thread of the task's client ends when the cluster closes)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:
        assert client.submit(submits_from_inside, 10).result(timeout=10) == 45
