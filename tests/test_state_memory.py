"""What a pending or finished task costs the scheduler (issue 14): tasks share the one-element
sets of who holds them and what they wait on, the empty buffer list of their arguments and their
function's token; a client sends a large submit in frames of at most FRAME_TASKS specs."""

from __future__ import annotations

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.client.connection import FRAME_TASKS
from nbcluster.protocol import messages as m
from nbcluster.protocol.framing import decode, encode
from nbcluster.protocol.serialize import dumps
from nbcluster.state import scheduler_state

from test_scheduler_state import Sim, spec

pytestmark = pytest.mark.timeout(60)


def test_tasks_waiting_on_one_input_share_one_set_until_they_wait_on_more():
    sim = Sim(("A",))
    sim.submit(spec("gate"))
    sim.submit(*[spec(f"t{i}", deps=["gate"]) for i in range(50)])
    waits = {id(sim.s.tasks[f"t{i}"].waiting_on) for i in range(50)}
    assert len(waits) == 1 and sim.s.tasks["t0"].waiting_on == {sim.s.tasks["gate"]}
    sim.submit(spec("other"), spec("both", deps=["gate", "other"]))
    both = sim.s.tasks["both"]
    assert both.waiting_on == {sim.s.tasks["gate"], sim.s.tasks["other"]}
    sim.finish("A", "gate")              # every step is validated: each set is still right
    assert all(sim.state(f"t{i}") in ("queued", "processing") for i in range(50))
    assert both.waiting_on == {sim.s.tasks["other"]}
    sim.finish("A", "other")
    assert sim.state("both") in ("queued", "processing") and not both.waiting_on


def test_results_held_by_one_worker_share_its_set_and_replicas_get_their_own():
    sim = Sim(("A", "B"))
    sim.submit(*[spec(f"x{i}") for i in range(4)])
    for i in range(4):
        sim.finish(sim.where(f"x{i}"), f"x{i}")
    on_a = [sim.s.tasks[f"x{i}"] for i in range(4) if sim.s.tasks[f"x{i}"].who_has
            == {sim.s.workers["A"]}]
    assert on_a and all(ts.who_has is sim.s.workers["A"].alone for ts in on_a)
    x = on_a[0]
    sim.s._add_replica(x, sim.s.workers["B"])          # a second copy: a set of its own
    assert x.who_has == {sim.s.workers["A"], sim.s.workers["B"]}
    assert sim.s.workers["A"].alone == {sim.s.workers["A"]}   # the shared one is untouched
    sim.remove_worker("A")                            # validated: every who_has still right
    assert x.who_has == {sim.s.workers["B"]} and sim.state(x.key) == "memory"


def test_a_pickled_argument_without_buffers_shares_the_empty_buffer_list():
    a, b = (decode(encode([m.Submit([m.TaskSpec(k, "f", dumps((k,)), None, [], None)])]))[0]
            for k in ("a", "b"))
    assert a.tasks[0].args.buffers == () and a.tasks[0].args.buffers is b.tasks[0].args.buffers


def test_tasks_of_one_function_share_its_token_string():
    sim = Sim(("A",))
    token = next(iter(sim.s.functions))
    sim.submit(*[m.TaskSpec(f"t{i}", "".join(token), [1], None, [], None) for i in range(3)])
    assert len({id(sim.s.tasks[f"t{i}"].fn) for i in range(3)}) == 1


def test_a_large_map_reaches_the_scheduler_in_frames_of_bounded_size(monkeypatch):
    sizes: list[int] = []
    handle = scheduler_state.SchedulerState.handle

    def recording(self, peer, batch, now):
        n = sum(len(msg.tasks) for msg in batch if type(msg) is m.Submit)
        if n:
            sizes.append(n)
        return handle(self, peer, batch, now)

    monkeypatch.setattr(scheduler_state.SchedulerState, "handle", recording)
    n = 2 * FRAME_TASKS + 123
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:
        futures = client.map(abs, range(n))
        assert client.gather(futures)[-1] == n - 1
    assert sum(sizes) == n and max(sizes) <= FRAME_TASKS and len(sizes) >= 3


def test_the_scheduler_state_keeps_to_thirty_attributes():
    """Past 30 attributes an instance loses CPython's shared-key dict and every ``self.``
    read in every rule slows (5 % more instructions a task, measured): group new fields
    (as FunctionRefs and Durable do)."""
    assert len(vars(scheduler_state.SchedulerState())) <= 30
