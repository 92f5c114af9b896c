"""A client survives its scheduler when the scheduler keeps a journal (issue 15): waiting calls
keep waiting across a restart at the same address, the client asks again for every key it
holds, and a key the scheduler came back without fails with FutureLostError. Without a
journal, a lost scheduler fails every waiting call at once, naming its address."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fake_scheduler import TOKEN, FakeScheduler
from nbcluster import Client
from nbcluster.errors import ClusterError, FutureLostError
from nbcluster.loop_thread import LoopThread
from nbcluster.protocol import messages as m
from nbcluster.testing import wait_until
from test_cli import read_line, start, stop

pytestmark = pytest.mark.timeout(30)


def inc(x):
    return x + 1


@pytest.fixture
def io():
    thread = LoopThread("nbcluster-test-fake-scheduler")
    yield thread
    thread.stop()


class Waiting:
    """``fn()`` called on a thread of its own: what it returned or raised, and when."""

    def __init__(self, fn) -> None:
        self.outcome: list = []
        self.thread = threading.Thread(target=self._run, args=(fn,), name="test-waiting")
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.outcome.append(("value", fn()))
        except BaseException as e:  # noqa: BLE001
            self.outcome.append(("error", e))
        self.ended = time.monotonic()

    def result(self, timeout: float = 10.0):
        self.thread.join(timeout)
        assert self.outcome, f"still waiting after {timeout} s"
        return self.outcome[0]


def submitted_keys(fake) -> list[str]:
    return [t.key for msg in fake.messages(m.Submit) for t in msg.tasks]


def test_waiting_results_survive_a_restart_of_a_scheduler_with_a_journal(io):
    a = FakeScheduler(io)
    with Client(a.address, token=TOKEN, reconnect_timeout=10) as client:
        _, identity = a.hello("client")
        kept, lost, done = client.submit(inc, 1), client.submit(inc, 2), client.submit(inc, 3)
        a.wait_for(lambda x: type(x) is m.Submit, "SUBMIT")
        a.send(a.comms[0], m.Done(done.key, True, 4, 8, []))
        assert done.result(timeout=5) == 4
        waiting = Waiting(lambda: kept.result(timeout=20))
        waiting_lost = Waiting(lambda: lost.result(timeout=20))
        a.crash()
        wait_until(lambda: client.status == "reconnecting", "the client to notice")
        later = client.submit(inc, 10)           # while there is no scheduler: kept for later
        # restarted at the same address; its answer to the ping after the WANT is sent by
        # hand below, after the answers to the WANT (as a real scheduler orders them)
        b = FakeScheduler(io, port=a.port, answer_pings=False)
        comm, again = b.hello("client")
        assert again["id"] == identity["id"]     # the same client, under the same id
        _, want = b.wait_for(lambda x: type(x) is m.Want, "WANT")
        assert set(want.keys) == {kept.key, lost.key, done.key, later.key}
        assert submitted_keys(b) == [later.key]  # what waited in the outbox went first
        # functions are pickled and sent again (under new tokens): b may not have them
        tokens = {x.token for x in b.messages(m.Function)}
        assert tokens and not tokens & {x.token for x in a.messages(m.Function)}
        assert {t.fn for x in b.messages(m.Submit) for t in x.tasks} <= tokens
        b.send(comm, m.Done(kept.key, True, 2, 8, []),
               m.Cancelled(lost.key, "the scheduler does not know this key"),
               m.Cancelled(done.key, "the scheduler does not know this key"))
        assert waiting.result() == ("value", 2)
        kind, error = waiting_lost.result()
        assert kind == "error" and isinstance(error, FutureLostError)
        assert f"the scheduler at {a.address} restarted without task {lost.key}; submit it " \
               "again" in str(error)
        assert lost.status == "lost"
        assert done.result(timeout=1) == 4       # a value already here is kept
        assert client.status == "running"
        # once the scheduler has answered the WANT (a ping after it says when), a
        # cancellation is a cancellation again, not a loss
        _, ping = b.wait_for(lambda x: type(x) is m.Request, "the ping after the WANT")
        b.send(comm, m.Reply(ping.request_id, True, True))
        wait_until(lambda: not client._conn.reconnect.rewanted, "the WANT to be answered")
        b.send(comm, m.Cancelled(later.key, "cancelled by someone"))
        with pytest.raises(Exception, match="cancelled by someone"):
            later.result(timeout=5)
        assert later.status == "cancelled"


def test_requests_waiting_for_an_answer_are_asked_again(io):
    a = FakeScheduler(io, answer_pings=False)
    with Client(a.address, token=TOKEN, reconnect_timeout=10) as client:
        a.hello("client")
        info = Waiting(lambda: client.scheduler_info())
        a.wait_for(lambda x: type(x) is m.Request and x.name == "info", "REQUEST info")
        a.crash()
        b = FakeScheduler(io, port=a.port, answer_pings=False)
        comm, request = b.wait_for(lambda x: type(x) is m.Request and x.name == "info",
                                   "REQUEST info again")
        b.send(b.comms[0], m.Reply(request.request_id, True, {"workers": {}}))
        assert info.result() == ("value", {"workers": {}})


def test_a_client_gives_up_after_its_reconnect_timeout(io):
    a = FakeScheduler(io)
    with Client(a.address, token=TOKEN, reconnect_timeout=0.5) as client:
        future = client.submit(inc, 1)
        a.wait_for(lambda x: type(x) is m.Submit, "SUBMIT")
        waiting = Waiting(lambda: future.result(timeout=20))
        a.crash()
        start = time.monotonic()
        kind, error = waiting.result()
        assert 0.4 < waiting.ended - start < 5
        assert kind == "error" and isinstance(error, FutureLostError)
        assert f"lost the scheduler at {a.address}" in str(error)
        assert "(reconnect_timeout=0.5 s)" in str(error)
        assert client.status == "disconnected"
        with pytest.raises(ClusterError, match=a.address):
            client.submit(inc, 2)


def test_without_a_journal_the_client_does_not_reconnect(io):
    a = FakeScheduler(io, journal=False)
    with Client(a.address, token=TOKEN, reconnect_timeout=10) as client:
        future = client.submit(inc, 1)
        a.wait_for(lambda x: type(x) is m.Submit, "SUBMIT")
        a.crash()
        with pytest.raises(FutureLostError, match=f"lost the scheduler at {a.address}"):
            future.result(timeout=5)
        assert client.status == "disconnected"


def test_a_waiting_result_fails_at_once_when_the_scheduler_is_killed(tmp_path):
    """A real scheduler (no journal) SIGKILLed while result() waits."""
    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               NBCLUSTER_TOKEN=TOKEN)
    proc = start(["scheduler", "--port", "0", "--dashboard-port", "-1"], env)
    try:
        address = read_line(proc, "nbcluster scheduler at").split()[-1]
        with Client(address, token=TOKEN) as client:
            future = client.submit(inc, 1)      # no workers: it waits
            waiting = Waiting(lambda: future.result())
            proc.kill()
            proc.wait()
            start_time = time.monotonic()
            kind, error = waiting.result()
            assert waiting.ended - start_time < 5
            assert kind == "error" and isinstance(error, FutureLostError)
            assert f"lost the scheduler at {address}" in str(error)
    finally:
        stop(proc)


def test_a_negative_reconnect_timeout_is_refused():
    with pytest.raises(ValueError, match="reconnect_timeout must not be negative"):
        Client("tcp://127.0.0.1:1", reconnect_timeout=-1)
