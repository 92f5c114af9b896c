"""The scheduler's journal (issue 15): what the state records, what the file keeps, what a
restart takes back, and what it refuses. Pure state plus a real SQLite file; the process-level
proof (SIGKILL in the middle of 10,000 tasks) is in tests/test_journal_restart.py."""

from __future__ import annotations

import sqlite3

import pytest

from nbcluster.errors import FutureLostError, JournalError
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps, loads
from nbcluster.server.journal import FORMAT, Journal, pack, unpack
from nbcluster.state import journal as jstate
from nbcluster.state.model import FIRE_AND_FORGET
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.testing import validate

from test_scheduler_state import BLOBS, C, FN, spec

pytestmark = pytest.mark.timeout(30)


class Kept:
    """A state with a journal on a real file: every step's records are written, as the
    scheduler's shell does before it sends anything."""

    def __init__(self, path, workers=("A",)):
        self.path = str(path)
        self.file = Journal(self.path)
        self.s = SchedulerState()
        self.now = 100.0
        jstate_saved = self.file.load()
        self.clients = jstate.restore(self.s, jstate_saved, self.now) \
            if jstate_saved.tasks else set()
        self.s.durable.journal = []
        self.s.add_client(C)
        for w in workers:
            self.step(self.s.add_worker(w, 1, w, {"address": w}, self.now))
        if not jstate_saved.tasks:
            self.client(*[m.Function(t, b) for t, b in BLOBS.items()])

    def step(self, out):
        self.file.write(self.s.durable.journal, self.s.runs)
        self.s.durable.journal = []
        validate(self.s, out)
        self.now += 0.01
        return out

    def client(self, *msgs, peer=C):
        return self.step(self.s.handle(peer, list(msgs), self.now))

    def finish(self, worker, key):
        ts = self.s.tasks[key]
        return self.step(self.s.handle(worker, [m.Finished(key, 8, self.now, self.now, False,
                                                           None, "int", ts.run_id)], self.now))

    def fail(self, worker, key, retry=None):
        ts = self.s.tasks[key]
        return self.step(self.s.handle(worker, [m.Failed(key, dumps(ValueError("boom")), "tb",
                                                         self.now, self.now, retry, ts.run_id)],
                                       self.now))

    def rows(self):
        return self.file.keys()

    def restart(self, workers=()):
        self.file.close()
        return Kept(self.path, workers)


def test_accepted_tasks_are_kept_until_forgotten_and_come_back_as_they_were(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("a"), spec("b", deps=["a"]), spec("c", deps=["b"]),
                       spec("later", options={"not_before": k.now + 3600, "retries": 2}),
                       spec("ff")]),
             m.FireAndForget(["ff"]), m.SetLimit("api", [5.0, 1.0], None))
    k.finish("A", "a")
    assert k.rows() == ["a", "b", "c", "later", "ff"]
    k.client(m.Release(["c"]))            # b and a are still wanted
    assert k.rows() == ["a", "b", "later", "ff"]
    k.client(m.Release(["a", "b"]))
    assert k.rows() == ["later", "ff"]

    r = k.restart(workers=("B",))
    s = r.s
    assert set(s.tasks) == {"later", "ff"} and r.clients == {C}
    assert s.tasks["later"].state == "delayed" and s.tasks["later"].retries_left == 2
    assert FIRE_AND_FORGET in s.tasks["ff"].who_wants and C in s.tasks["ff"].who_wants
    assert s.limits["api"].interval == 0.2
    assert s.tasks["ff"].state == "queued"       # held until placement resumes
    out = r.step(jstate.resume_placement(s, r.now))
    assert [msg.key for _, msg in out if type(msg) is m.Compute] == ["ff"]


def test_a_restart_keeps_lineage_failures_retries_and_the_run_counter(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("x", options={"retries": 1}), spec("y", deps=["x"]),
                       spec("bad")]))
    k.fail("A", "bad")                     # erred for good: no retries
    k.fail("A", "x", retry={})             # one retry spent (the worker says it may retry)
    runs = k.s.runs
    r = k.restart()
    s = r.s
    assert s.tasks["x"].retries_left == 0 and s.tasks["x"].retry_count == 1
    assert s.tasks["bad"].state == "erred"
    assert isinstance(loads(s.tasks["bad"].exception), ValueError)
    assert s.tasks["y"].state == "waiting" and s.tasks["y"].deps == (s.tasks["x"],)
    assert s.runs >= runs                  # a new run never reuses an old run's id
    r.client(m.RetryTasks(["bad"]))        # rerun: the journal forgets the failure
    assert r.file.load().tasks[-1].erred is None


def test_a_worker_that_comes_back_with_results_saves_their_work(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("a"), spec("b", deps=["a"]), spec("c")]))
    k.finish("A", "a")
    r = k.restart()                        # no workers yet: everything waits
    s = r.s
    out = r.step(s.add_worker("A", 1, "A", {"address": "A"}, r.now, {"a": 8, "zz": 4}))
    assert s.tasks["a"].state == "memory" and s.tasks["b"].state == "queued"
    assert ("A", m.Free(["zz"], [s.runs])) in out           # unknown: the worker may drop it
    assert any(p == C and type(msg) is m.Done and msg.key == "a" for p, msg in out)
    out = r.step(jstate.resume_placement(s, r.now))
    assert sorted(msg.key for _, msg in out if type(msg) is m.Compute) == ["b", "c"]


def test_a_client_gone_for_good_lets_its_tasks_go(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("mine")]))
    r = k.restart()
    r.step(r.s.remove_client(C, r.now))
    assert "mine" not in r.s.tasks and r.rows() == []


def test_a_task_whose_function_is_missing_fails_as_lost(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("t")]))
    k.file.db.execute("DELETE FROM functions")
    r = k.restart()
    ts = r.s.tasks["t"]
    assert ts.state == "erred" and isinstance(loads(ts.exception), FutureLostError)
    assert FN in str(loads(ts.exception))


def test_records_round_trip_through_the_protocol_and_are_checked():
    erred = m.Erred("k", dumps(KeyError("x")), "tb", None)
    back = unpack(pack(erred), m.Erred)
    assert (back.key, back.traceback, back.blame) == ("k", "tb", None)
    assert loads(back.exception).args == ("x",)
    with pytest.raises(ValueError, match="Erred"):
        unpack(pack(m.SetLimit("k", None, 2)), m.Erred)
    with pytest.raises(ValueError, match="after the last frame"):
        unpack(pack(erred) + b"x", m.Erred)


def test_a_damaged_foreign_or_newer_journal_is_refused_whole(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match="garbage"):
        Journal(str(garbage))
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(JournalError, match="not an nbcluster journal"):
        Journal(str(other))
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("a"), spec("b")]))
    k.file.db.execute(f"PRAGMA user_version={FORMAT + 1}")
    k.file.close()
    with pytest.raises(JournalError, match=f"format {FORMAT + 1}"):
        Journal(k.path)
    k.file = Journal.__new__(Journal)
    db = sqlite3.connect(k.path)
    db.execute(f"PRAGMA user_version={FORMAT}")
    db.execute("UPDATE log SET step = x'00' WHERE seq = (SELECT max(seq) FROM log)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="step [0-9]+.*nothing of it was used"):
        Journal(k.path).load()


def test_an_in_process_cluster_on_a_journal_takes_back_what_it_held(tmp_path):
    from nbcluster import Client, LocalCluster, fire_and_forget

    path = str(tmp_path / "j.sqlite")
    with LocalCluster(n_workers=1, processes=False, dashboard=False, journal=path) as cluster, \
            Client(cluster) as client:
        later = client.submit(abs, -1, countdown=3600)
        fire_and_forget(later)
        assert client.submit(abs, -2).result(timeout=10) == 2
        key = later.key
    with LocalCluster(n_workers=1, processes=False, dashboard=False, journal=path) as cluster, \
            Client(cluster) as client:
        info = client.scheduler_info()
        assert info["journal"] == path and info["tasks"] == {"delayed": 1}
        assert cluster.scheduler.state.tasks[key].state == "delayed"


def test_the_log_nets_out_each_step_and_compacts_to_the_live_tasks(tmp_path, monkeypatch):
    from nbcluster.server import journal as journal_module

    k = Kept(tmp_path / "j.sqlite")
    # accepted and forgotten in one step: nothing is logged for it
    k.client(m.Submit([spec("gone-at-once")]), m.Release(["gone-at-once"]))
    assert k.file.db.execute("SELECT count(*) FROM log").fetchone()[0] == 0
    for i in range(60):                     # many steps, most tasks forgotten again
        kept = [spec(f"keep{i}", options={"retries": 2})] if i < 10 else []
        k.client(m.Submit([spec(f"t{i}"), *kept]))
        k.finish("A", f"t{i}")
        k.client(m.Release([f"t{i}"]))
    k.client(m.Submit([spec("bad")]))
    k.fail("A", "bad")
    steps = k.file.db.execute("SELECT count(*) FROM log").fetchone()[0]
    before = k.file.keys()
    assert before == [f"keep{i}" for i in range(10)] + ["bad"]
    assert k.file.logged > len(before)
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 10)
    assert k.file.wants_compaction()
    k.file.compact()
    assert k.file.db.execute("SELECT count(*) FROM log").fetchone()[0] == 1 < steps
    assert k.file.keys() == before and k.file.logged == len(before)
    r = k.restart()
    assert r.s.tasks["bad"].state == "erred"
    assert isinstance(loads(r.s.tasks["bad"].exception), ValueError)
    assert r.s.tasks["keep3"].retries_left == 2
    assert r.s.tasks["keep3"].who_wants == (C,)


def test_compacting_an_empty_log_keeps_the_run_counter(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("x")]))
    k.finish("A", "x")
    k.client(m.Release(["x"]))
    runs = k.s.runs
    assert runs > 0 and k.file.keys() == []
    k.file.compact()
    assert k.file.db.execute("SELECT count(*) FROM log").fetchone()[0] == 0
    assert k.file.load().runs >= runs
