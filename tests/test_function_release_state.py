"""When the scheduler's state lets go of a function (issue 13, item 5), fed plain messages.

A function is kept while its client holds it (from FUNCTION to RELEASE-FUNCTIONS or the
client's departure) or a known task names it; then it goes, and each worker it was sent to
hears FORGET-FUNCTIONS once per step. Every step checks the invariants and what was sent
(``nbcluster.testing.validate``): a worker is never sent a task whose function it was told to
forget without the function again first.
"""

from __future__ import annotations

import pytest

from nbcluster.errors import ProtocolError
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps, loads
from nbcluster.state.model import merge_frees
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.testing import FakeClock, validate

C, C2 = "client-1", "client-2"
T, T2 = "f-tok", "g-tok"


def spec(key, fn=T, deps=(), options=None):
    return m.TaskSpec(key, fn, [1], None, list(deps), options)


class Sim:
    def __init__(self, workers=("A", "B"), clients=(C,)):
        self.s = SchedulerState()
        self.clock = FakeClock(100.0)
        self.sent: dict[str, set] = {}
        for c in clients:
            self.s.add_client(c)
        for w in workers:
            self.add_worker(w)

    def _step(self, out):
        self.clock.advance(0.001)
        validate(self.s, out, self.sent)
        return out

    def client(self, *msgs, peer=C):
        return self._step(self.s.handle(peer, list(msgs), self.clock.now()))

    def worker(self, addr, *msgs):
        return self._step(self.s.handle(addr, list(msgs), self.clock.now()))

    def add_worker(self, addr):
        return self._step(self.s.add_worker(addr, 1, addr, {"address": addr}, self.clock.now()))

    def remove_worker(self, addr):
        self.sent.pop(addr, None)
        return self._step(self.s.remove_worker(addr, self.clock.now()))

    def remove_client(self, peer):
        return self._step(self.s.remove_client(peer, self.clock.now()))

    def wake(self):
        return self._step(self.clock.wake(self.s))

    def function(self, token=T, peer=C):
        return self.client(m.Function(token, f"<{token}>".encode()), peer=peer)

    def finish(self, key):
        ts = self.s.tasks[key]
        now = self.clock.now()
        return self.worker(ts.processing_on.address, m.Finished(key, 8, now, now + 0.001,
                                                                False, None, "int", ts.run_id))

    def where(self, key):
        return self.s.tasks[key].processing_on.address

    def uses(self, token=T):
        return self.s.fn_refs.uses.get(token, 0)


def forgets(out):
    """{worker: [tokens]} of the FORGET-FUNCTIONS in ``out`` (failing on two to one worker)."""
    found: dict[str, list] = {}
    for peer, msg in out:
        if type(msg) is m.ForgetFunctions:
            assert peer not in found, f"two FORGET-FUNCTIONS to {peer} in one step"
            found[peer] = msg.tokens
    return found


def test_a_function_is_counted_by_its_known_tasks_and_dropped_when_neither_they_nor_its_client_hold_it():
    sim = Sim()
    sim.function()
    sim.client(m.Submit([spec("x"), spec("y"), spec("z")]))
    assert sim.uses() == 3
    assert {sim.where(k) for k in "xy"} == {"A", "B"}        # both workers were sent it
    for k in "xyz":
        sim.finish(k)
    out = sim.client(m.Release(["x", "y"]))
    assert sim.uses() == 1 and not forgets(out)
    out = sim.client(m.Release(["z"]))
    assert sim.uses() == 0 and T in sim.s.functions           # the client still holds it
    assert not forgets(out)
    out = sim.client(m.ReleaseFunctions([T]))
    assert T not in sim.s.functions and not sim.s.fn_refs.workers
    assert forgets(out) == {"A": [T], "B": [T]}
    assert all(not ws.functions for ws in sim.s.workers.values())


def test_a_function_released_by_its_client_stays_while_a_task_names_it():
    sim = Sim(workers=("A",))
    sim.function()
    sim.function(T2)
    sim.client(m.Submit([spec("x"), spec("y", T2)]))
    out = sim.client(m.ReleaseFunctions([T, T2]))
    assert T in sim.s.functions and T2 in sim.s.functions and not forgets(out)
    sim.finish("x")
    sim.finish("y")
    out = sim.client(m.Release(["x", "y"]))           # both go in one step: one message
    assert set(sim.s.functions) == set()
    assert forgets(out) == {"A": [T, T2]}
    frees = [i for i, (p, msg) in enumerate(merge_frees(out)) if type(msg) is m.Free]
    forget = [i for i, (p, msg) in enumerate(merge_frees(out)) if type(msg) is m.ForgetFunctions]
    assert frees and frees[-1] < forget[0]            # the keys are freed before their functions


def test_release_of_a_token_and_a_task_naming_it_in_one_batch():
    """A client must not name a token after releasing it (the client never does: it names a
    function used again by a new token). If one does, the task fails saying why; the
    scheduler and the other tasks carry on."""
    sim = Sim(workers=("A",))
    sim.function()
    out = sim.client(m.ReleaseFunctions([T]), m.Submit([spec("late")]))
    assert T not in sim.s.functions
    erred = [msg for p, msg in out if type(msg) is m.Erred]
    assert [e.key for e in erred] == ["late"]
    exc = loads(erred[0].exception)
    assert isinstance(exc, ProtocolError) and "released" in str(exc)
    # in a later batch, the token is unknown: the batch is refused before anything applies
    with pytest.raises(ProtocolError, match="unknown function"):
        sim.s.handle(C, [m.Submit([spec("later")])], sim.clock.now())
    # the other order in one batch: the task holds the function, which goes with it
    sim.function(T2)
    out = sim.client(m.Submit([spec("x", T2)]), m.ReleaseFunctions([T2]))
    assert sim.uses(T2) == 1 and T2 in sim.s.functions
    sim.finish("x")
    out = sim.client(m.Release(["x", "late"]))
    assert forgets(out) == {"A": [T2]} and not sim.s.functions


def test_a_function_dropped_and_sent_again_in_one_step_stays_on_its_worker():
    sim = Sim(workers=("A",))
    sim.function()
    sim.client(m.Submit([spec("x")]))
    sim.finish("x")
    out = sim.client(m.Release(["x"]), m.ReleaseFunctions([T]),
                     m.Function(T, b"<f>"), m.Submit([spec("y")]))
    assert not forgets(out)               # A keeps it: it runs y with it
    assert ("A", m.Function(T, b"<f>")) in out
    assert sim.where("y") == "A"


def test_a_new_token_after_a_drop_travels_to_the_workers_again():
    sim = Sim(workers=("A",))
    sim.function()
    sim.client(m.Submit([spec("x")]))
    sim.finish("x")
    out = sim.client(m.Release(["x"]), m.ReleaseFunctions([T]))
    assert forgets(out) == {"A": [T]}
    out = sim.client(m.Function(T2, b"<f again>"), m.Submit([spec("y", T2)]))
    kinds = [type(msg) for p, msg in out if p == "A"]
    assert kinds == [m.Function, m.Compute]


def test_lineage_keeps_the_function_of_a_finished_input_for_its_recompute():
    sim = Sim(workers=("A", "B"))
    sim.function()
    sim.function(T2)
    sim.client(m.Submit([spec("a"), spec("b", T2, deps=["a"])]))
    sim.finish("a")
    sim.finish("b")
    sim.client(m.Release(["a"]), m.ReleaseFunctions([T, T2]))   # the client holds only b
    assert sim.s.tasks["a"].state == "released" and T in sim.s.functions
    holder = next(iter(sim.s.tasks["b"].who_has)).address
    other = "B" if holder == "A" else "A"
    sim.remove_worker(holder)               # b is lost: recomputed, and a first
    assert sim.s.tasks["a"].state == "processing" and sim.where("a") == other
    sim.add_worker("C")
    sim.finish("a")
    sim.finish("b")
    out = sim.client(m.Release(["b"]))
    assert not sim.s.functions and not sim.s.fn_refs.uses
    assert set(forgets(out)) <= {other, "C"} and all(forgets(out).values())


def test_a_fire_and_forget_task_keeps_its_function_after_its_client_left():
    sim = Sim(workers=("A",), clients=(C, C2))
    sim.function()
    sim.function(T2)
    sim.client(m.Submit([spec("x"), spec("y", T2)]))
    sim.client(m.FireAndForget(["x"]))
    out = sim.remove_client(C)
    assert set(sim.s.functions) == {T}      # T2: its task is gone with the client
    assert forgets(out) == {"A": [T2]}
    out = sim.finish("x")
    assert not sim.s.functions and forgets(out) == {"A": [T]}


def test_a_failed_task_keeps_its_function_for_a_retry():
    sim = Sim(workers=("A",))
    sim.function()
    sim.client(m.Submit([spec("x", options={"retries": 1, "retry_backoff": 5,
                                            "retry_jitter": False})]))
    sim.client(m.ReleaseFunctions([T]))      # the scheduler does not rely on the client
    ts = sim.s.tasks["x"]
    now = sim.clock.now()
    sim.worker("A", m.Failed("x", dumps(ValueError("boom")), "tb", now, now,
                             {"delay": 5.0, "max": None}, ts.run_id))
    assert ts.state == "delayed" and T in sim.s.functions     # retried after its back-off
    out = sim.wake()
    assert ts.state == "processing" and T in sim.s.functions
    assert ("A", m.Compute) in [(p, type(msg)) for p, msg in out] and not forgets(out)
    now = sim.clock.now()
    sim.worker("A", m.Failed("x", dumps(ValueError("boom")), "tb", now, now, None, ts.run_id))
    assert ts.state == "erred" and T in sim.s.functions       # client.retry may run it again
    out = sim.client(m.RetryTasks(["x"]))
    assert ts.state == "processing"
    sim.finish("x")
    out = sim.client(m.Release(["x"]))
    assert forgets(out) == {"A": [T]}


def test_a_delayed_task_keeps_its_function_until_it_starts_and_ends():
    sim = Sim(workers=("A",))
    sim.function()
    sim.client(m.Submit([spec("x", options={"not_before": sim.clock.now() + 60})]))
    sim.client(m.FireAndForget(["x"]), m.Release(["x"]), m.ReleaseFunctions([T]))
    assert sim.s.tasks["x"].state == "delayed" and T in sim.s.functions
    sim.wake()
    assert sim.s.tasks["x"].state == "processing"
    out = sim.finish("x")
    assert not sim.s.functions and forgets(out) == {"A": [T]}


def test_a_worker_that_leaves_is_no_longer_counted_as_having_a_function():
    sim = Sim(workers=("A", "B"))
    sim.function()
    sim.client(m.Submit([spec("x"), spec("y")]))
    sim.remove_worker("A")
    assert {ws.address for ws in sim.s.fn_refs.workers[T]} == {"B"}
    for k in "xy":
        sim.finish(k)
    out = sim.client(m.Release(["x", "y"]), m.ReleaseFunctions([T]))
    assert forgets(out) == {"B": [T]}


def test_a_restart_drops_the_functions_no_client_holds():
    sim = Sim(workers=("A",), clients=(C, C2))
    sim.function()
    sim.function(T2, peer=C2)
    sim.client(m.Submit([spec("x")]))
    sim.client(m.Submit([spec("y", T2)]), peer=C2)
    sim.client(m.ReleaseFunctions([T2]), peer=C2)
    out = sim._step(sim.s.restart("restart", sim.clock.now()))
    assert set(sim.s.functions) == {T}
    assert forgets(out) == {"A": [T2]}


def test_a_release_of_a_function_the_peer_does_not_hold_changes_nothing():
    sim = Sim(workers=("A",), clients=(C, C2))
    sim.function()
    sim.client(m.ReleaseFunctions([T, "never-sent"]), peer=C2)
    assert T in sim.s.functions and sim.s.fn_refs.owners[T] == C


@pytest.mark.parametrize("known", [True, False], ids=["already-on-worker", "sent-this-step"])
def test_a_task_sent_and_forgotten_in_one_step_with_its_function(known):
    sim = Sim(workers=("A",))
    sim.function()
    if known:
        sim.client(m.Submit([spec("w")]))
        sim.finish("w")
        sim.client(m.Release(["w"]))
    pinned = {"workers": ["A"]}         # placed at once, within the batch
    out = sim.client(m.Submit([spec("x", options=pinned)]), m.Release(["x"]),
                     m.ReleaseFunctions([T]))
    assert not sim.s.tasks and not sim.s.functions
    merged = merge_frees(out)
    kinds = [type(msg) for p, msg in merged if p == "A"]
    assert kinds == ([] if known else [m.Function]) + [m.Compute, m.Free, m.ForgetFunctions]
    validate(sim.s, out)          # also when trusting the scheduler's record of earlier steps
