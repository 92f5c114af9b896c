"""Coordination primitives in the scheduler's pure state (issue 17): Queue, Variable, Event,
Lock, Semaphore and publish, fed COORDINATE messages; time is data (FakeClock). Every step is
validated (``Sim``), which checks that each future a primitive holds is wanted by it."""

from __future__ import annotations

import pytest

from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps

from test_journal import Kept
from test_scheduler_state import C, C2, Sim, sent, spec

pytestmark = pytest.mark.timeout(10)


class Coord:
    """A Sim with two clients, and COORDINATE requests numbered per test."""

    def __init__(self) -> None:
        self.sim = Sim(("A",), clients=(C, C2))
        self.rid = 0

    def ask(self, kind, action, name="x", peer=C, value=None, key=None, lease="", n=0,
            timeout=None):
        self.rid += 1
        out = self.sim.client(m.Coordinate(self.rid, kind, action, name, value, key, lease, n,
                                           timeout), peer=peer)
        return self.rid, out

    def leave(self, peer):
        return self.sim._step(self.sim.s.remove_client(peer, self.sim.now))

    def done_task(self, key):
        """A finished task ``key`` of client C."""
        self.sim.submit(spec(key))
        self.sim.finish("A", key)
        return self.sim.s.tasks[key]


def replies(out, peer=C):
    return {msg.request_id: (msg.ok, msg.result) for msg in sent(out, peer, m.Reply)}


def test_queue_getters_are_answered_in_the_order_they_came():
    c = Coord()
    first, out = c.ask("queue", "get", peer=C2)
    second, out2 = c.ask("queue", "get")
    assert not replies(out, C2) and not replies(out2)          # both wait
    _, out = c.ask("queue", "put", value="a")
    assert replies(out, C2) == {first: (True, [None, "a"])}
    _, out = c.ask("queue", "put", value="b")
    assert replies(out)[second] == (True, [None, "b"])
    assert c.sim.s.durable.coord.queues == {}                   # empty: nothing kept


def test_a_get_that_timed_out_takes_nothing_and_the_next_put_stays_queued():
    c = Coord()
    rid, _ = c.ask("queue", "get", timeout=5)
    out = c.sim.wake()                                           # the deadline
    assert c.sim.now >= 105
    assert replies(out) == {rid: (False, ["timeout", "queue 'x' stayed empty"])}
    c.ask("queue", "put", value=1)
    rid, out = c.ask("queue", "qsize")
    assert replies(out)[rid] == (True, 1)
    rid, out = c.ask("queue", "get", timeout=0)
    assert replies(out)[rid] == (True, [None, 1])
    rid, out = c.ask("queue", "get", timeout=0)                 # empty: now or never
    assert replies(out)[rid][1][0] == "timeout"


def test_a_full_queue_holds_puts_back_until_a_get_makes_room_in_order():
    c = Coord()
    c.ask("queue", "put", value=1, n=1)
    waiting, out = c.ask("queue", "put", value=2, n=1)
    assert not replies(out)
    rid, out = c.ask("queue", "put", value=3, n=1, timeout=0)
    assert replies(out)[rid] == (False, ["timeout", "queue 'x' is full (1 items)"])
    rid, out = c.ask("queue", "get", peer=C2)
    assert replies(out, C2)[rid] == (True, [None, 1]) and replies(out)[waiting] == (True, None)
    rid, out = c.ask("queue", "put", value=4, n=2)
    assert replies(out)[rid] == (False, ["ValueError",
                                         "queue 'x' has maxsize=1; this handle says 2"])
    rid, out = c.ask("queue", "get", peer=C2)
    assert replies(out, C2)[rid] == (True, [None, 2])
    assert c.sim.s.durable.coord.queues == {}     # empty: dropped (a new one may differ)


def test_a_batch_get_waits_for_all_its_items_and_batch_true_takes_what_is_there():
    c = Coord()
    rid, out = c.ask("queue", "get", n=-1)
    assert replies(out)[rid] == (True, [])
    batch, _ = c.ask("queue", "get", n=2, peer=C2)
    rid, out = c.ask("queue", "get", n=-1)                      # empty, with a getter waiting
    assert replies(out)[rid] == (True, [])
    _, out = c.ask("queue", "put", value="a")
    assert not replies(out, C2)
    _, out = c.ask("queue", "put", value="b")
    assert replies(out, C2)[batch] == (True, [[None, "a"], [None, "b"]])
    for v in "cde":
        c.ask("queue", "put", value=v)
    rid, out = c.ask("queue", "get", n=-1)
    assert [item[1] for item in replies(out)[rid][1]] == ["c", "d", "e"]


def test_a_getter_that_gave_up_at_the_front_no_longer_holds_the_next_back():
    c = Coord()
    big, _ = c.ask("queue", "get", n=3, timeout=1)
    small, _ = c.ask("queue", "get", peer=C2)
    c.ask("queue", "put", value="a")
    out = c.sim.wake()
    assert replies(out)[big][1][0] == "timeout" and replies(out, C2)[small] == (True, [None, "a"])


def test_a_future_in_a_queue_keeps_its_result_until_taken_then_the_taker_holds_it():
    c = Coord()
    ts = c.done_task("x")
    c.ask("queue", "put", key="x")
    c.sim.release("x")                                           # the producer lets go
    assert c.sim.state("x") == "memory" and ts.who_wants == ("@queue:x",)
    rid, out = c.ask("queue", "get", peer=C2)
    assert replies(out, C2)[rid] == (True, ["x", None])
    assert ts.who_wants == (C2,)                                 # the queue let go
    c.sim.release("x", peer=C2)
    assert c.sim.state("x") == "forgotten"


def test_the_same_future_twice_in_a_queue_is_held_until_both_are_taken():
    c = Coord()
    c.done_task("x")
    c.ask("queue", "put", key="x")
    c.ask("queue", "put", key="x")
    c.sim.release("x")
    c.ask("queue", "get", peer=C2)
    c.sim.release("x", peer=C2)
    assert c.sim.state("x") == "memory"                          # the second is still queued
    c.ask("queue", "get", peer=C2)
    c.sim.release("x", peer=C2)
    assert c.sim.state("x") == "forgotten"


def test_putting_a_future_the_scheduler_does_not_know_says_so():
    c = Coord()
    rid, out = c.ask("queue", "put", key="nope")
    ok, (code, text) = replies(out)[rid]
    assert not ok and code == "FutureLostError" and "'nope'" in text
    assert c.sim.s.durable.coord.queues == {}


def test_a_variable_keeps_its_future_until_replaced_or_deleted():
    c = Coord()
    waiting, _ = c.ask("variable", "get", peer=C2)
    c.done_task("x")
    c.done_task("y")
    _, out = c.ask("variable", "set", key="x")
    assert replies(out, C2)[waiting] == (True, ["x", None])
    c.sim.release("x")
    c.sim.release("x", peer=C2)
    assert c.sim.state("x") == "memory"                          # the variable holds it
    c.ask("variable", "set", key="y")
    assert c.sim.state("x") == "forgotten"
    c.sim.release("y")
    rid, out = c.ask("variable", "get", timeout=0)
    assert replies(out)[rid] == (True, ["y", None])             # the getter holds it now
    c.sim.release("y")
    assert c.sim.state("y") == "memory"
    c.ask("variable", "delete")
    assert c.sim.state("y") == "forgotten" and c.sim.s.durable.coord.variables == {}
    rid, out = c.ask("variable", "get", timeout=2)
    out = c.sim.wake()
    assert replies(out)[rid] == (False, ["timeout", "variable 'x' stayed empty"])


def test_an_event_answers_its_waiters_when_set_and_a_wait_times_out_false():
    c = Coord()
    w1, _ = c.ask("event", "wait", peer=C2)
    w2, _ = c.ask("event", "wait", timeout=10)
    _, out = c.ask("event", "set", peer=C2)
    assert replies(out, C2)[w1] == (True, True) and replies(out)[w2] == (True, True)
    assert not sent(c.sim.wake(), op=m.Reply)                    # w2's deadline: answered
    rid, out = c.ask("event", "is_set")
    assert replies(out)[rid] == (True, True)
    c.ask("event", "clear")
    rid, _ = c.ask("event", "wait", timeout=1)
    out = c.sim.wake()
    assert replies(out)[rid] == (True, False)
    assert c.sim.s.durable.coord.events == {}


def test_a_lock_is_held_by_one_lease_and_the_next_waiter_gets_it_on_release():
    c = Coord()
    rid, out = c.ask("lock", "acquire", lease="a", n=1)
    assert replies(out)[rid] == (True, True)
    second, out = c.ask("lock", "acquire", lease="b", n=1, peer=C2)
    third, out = c.ask("lock", "acquire", lease="c", n=1)        # same client, another handle
    assert not replies(out) and not replies(out, C2)
    rid, out = c.ask("lock", "acquire", lease="d", n=1, timeout=0)
    assert replies(out)[rid] == (True, False)
    rid, out = c.ask("lock", "release", lease="zzz", n=1)
    assert replies(out)[rid][1][0] == "RuntimeError"
    _, out = c.ask("lock", "release", lease="a")
    assert replies(out, C2) == {second: (True, True)} and third not in replies(out)
    _, out = c.ask("lock", "release", lease="b", peer=C2)
    assert replies(out)[third] == (True, True)


def test_a_lease_of_a_client_that_disconnects_goes_to_the_next_waiter():
    c = Coord()
    c.ask("lock", "acquire", lease="a", n=1)
    waiting, _ = c.ask("lock", "acquire", lease="b", n=1, peer=C2)
    out = c.leave(C)
    assert replies(out, C2) == {waiting: (True, True)}
    _, out = c.ask("lock", "release", lease="b", peer=C2)
    assert c.sim.s.durable.coord.leases == {}


def test_a_semaphore_gives_max_leases_and_refuses_another_max():
    c = Coord()
    for lease in "ab":
        rid, out = c.ask("semaphore", "acquire", lease=lease, n=2)
        assert replies(out)[rid] == (True, True)
    rid, out = c.ask("semaphore", "acquire", lease="c", n=2, timeout=3)
    assert not replies(out)
    rid2, out = c.ask("semaphore", "acquire", lease="d", n=3)
    assert replies(out)[rid2] == (False, ["ValueError", "semaphore 'x' has max_leases=2; "
                                          "this handle says 3"])
    v, out = c.ask("semaphore", "value")
    assert replies(out)[v] == (True, 2)
    out = c.sim.wake()
    assert replies(out)[rid] == (True, False)                    # timed out


def test_the_waiting_requests_of_a_client_that_left_are_dropped():
    c = Coord()
    c.ask("queue", "get", peer=C2, timeout=30)
    c.ask("queue", "put", name="full", value=1, n=1)
    c.sim.submit(spec("y"), peer=C2)
    c.ask("queue", "put", name="full", key="y", n=1, peer=C2)    # waits, holding y
    assert c.sim.s.tasks["y"].who_wants == (C2, "@queue:full")
    out = c.leave(C2)
    assert not sent(out, C2) and c.sim.state("y") == "forgotten"
    c.ask("queue", "put", value="kept")                          # no getter takes it
    rid, out = c.ask("queue", "qsize")
    assert replies(out)[rid] == (True, 1)
    assert not sent(c.sim.wake(), op=m.Reply)                    # the getter's deadline


def test_a_cancelled_request_waits_no_more():
    c = Coord()
    rid, _ = c.ask("queue", "get")
    c.sim.client(m.Coordinate(0, "queue", "cancel", "x", None, None, "", rid, None))
    _, out = c.ask("queue", "put", value="kept", peer=C2)
    assert not replies(out)
    rid, out = c.ask("queue", "qsize")
    assert replies(out)[rid] == (True, 1)


def test_published_futures_outlive_their_client_until_unpublished():
    c = Coord()
    c.done_task("x")
    rid, out = c.ask("published", "add", name="result", key="x")
    assert replies(out)[rid] == (True, None)
    rid, out = c.ask("published", "add", name="result", value=1)
    assert replies(out)[rid][0] is False and "published already" in replies(out)[rid][1][1]
    c.leave(C)                                                   # the first notebook closed
    assert c.sim.state("x") == "memory"
    rid, out = c.ask("published", "get", name="result", peer=C2)
    assert replies(out, C2)[rid] == (True, ["x", None])
    rid, out = c.ask("published", "list", name="", peer=C2)
    assert replies(out, C2)[rid] == (True, ["result"])
    c.ask("published", "delete", name="result", peer=C2)
    assert c.sim.state("x") == "memory"                          # C2 holds it now
    c.sim.release("x", peer=C2)
    assert c.sim.state("x") == "forgotten"
    rid, out = c.ask("published", "delete", name="result", peer=C2)
    assert replies(out, C2)[rid] == (False, ["KeyError", "nothing is published as 'result'"])
    rid, out = c.ask("published", "get", name="result", peer=C2)
    assert replies(out, C2)[rid] == (True, None)


def test_a_pickled_value_travels_through_untouched():
    c = Coord()
    blob = dumps({"a": [1, 2]})
    c.ask("variable", "set", value=blob)
    rid, out = c.ask("variable", "get", peer=C2)
    assert replies(out, C2)[rid][1][1] is blob


def test_bad_requests_are_refused_naming_what_is_wrong():
    c = Coord()
    rid, out = c.ask("queue", "acquire")
    assert replies(out)[rid] == (False, ["ValueError", "a queue has no operation 'acquire'"])
    rid, out = c.ask("lock", "acquire", name="", lease="a", n=1)
    assert replies(out)[rid] == (False, ["ValueError", "a lock needs a name (a non-empty "
                                         "string)"])
    rid, out = c.ask("queue", "get", n=-2)
    assert replies(out)[rid][1][0] == "ValueError"


def test_a_restart_forgets_the_futures_primitives_held_and_keeps_values():
    c = Coord()
    c.done_task("x")
    c.ask("queue", "put", key="x")
    c.ask("queue", "put", value="v")
    c.ask("variable", "set", key="x")
    c.ask("published", "set", name="p", key="x")
    c.ask("published", "set", name="q", value=5)
    c.sim._step(c.sim.s.restart("test", c.sim.now))
    coord = c.sim.s.durable.coord
    assert list(coord.queues["x"].items) == [(None, "v")] and coord.variables == {}
    assert coord.published == {"q": (None, 5)} and coord.refs == {}


def test_published_futures_and_variables_come_back_from_the_journal(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    k.client(m.Submit([spec("x"), spec("y"), spec("z")]))
    for rid, (kind, name, key) in enumerate([("published", "p", "x"), ("variable", "v", "y"),
                                             ("queue", "q", "z")]):
        k.client(m.Coordinate(rid + 1, kind, "put" if kind == "queue" else "set", name, None,
                              key, "", 0, None))
    k.client(m.Release(["x", "y", "z"]))
    r = k.restart(workers=("A",))
    coord = r.s.durable.coord
    assert coord.published == {"p": ("x", None)} and coord.variables["v"].item == ("y", None)
    assert "z" not in r.s.tasks and coord.queues == {}          # queues are not kept
