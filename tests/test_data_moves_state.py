"""client.replicate and client.rebalance in the pure scheduler state: what is copied where, that
a moved result is freed on its source only once its new holder has it, and that the client's
request is answered (a REPLY from the state) only when every copy has been reported."""

from __future__ import annotations

import pytest

from nbcluster.protocol import messages as m

from test_scheduler_state import C, Sim, frees, spec

pytestmark = pytest.mark.timeout(10)


def replicates(out):
    return {(p, msg.source, k) for p, msg in out if type(msg) is m.Replicate for k in msg.keys}


def replies(out):
    return [msg for p, msg in out if type(msg) is m.Reply and p == C]


def results_on(sim, worker, keys, nbytes=100):
    """Submit ``keys`` pinned to ``worker`` and finish them there."""
    sim.submit(*[spec(k, options={"workers": [worker]}) for k in keys])
    for k in keys:
        sim.finish(worker, k, nbytes=nbytes)


def holders(sim, key):
    return sorted(w.address for w in sim.s.tasks[key].who_has)


def test_replicate_copies_to_every_worker_and_answers_once_all_are_there():
    sim = Sim(("A", "B", "C"))
    results_on(sim, "A", ["x", "y"])
    out = sim._step(sim.s.replicate(C, 7, ["x", "y", "gone"], None, sim.now))
    assert replicates(out) == {(w, "A", k) for w in ("B", "C") for k in ("x", "y")}
    assert not replies(out)
    out = sim.worker("B", m.Replicated(["x", "y"], []))
    assert not replies(out)
    out = sim.worker("C", m.Replicated(["x"], ["y"]))   # C could not get y
    [reply] = replies(out)
    assert reply.request_id == 7 and reply.ok
    assert reply.result == {"copied": 3, "failed": 1, "freed": 0, "moved_bytes": 0,
                            "missing": ["gone"]}
    assert holders(sim, "x") == ["A", "B", "C"] and holders(sim, "y") == ["A", "B"]


def test_replicate_to_n_workers_copies_to_the_emptiest_or_frees_the_extra_copies():
    sim = Sim(("A", "B", "C"))
    results_on(sim, "A", ["x"])
    results_on(sim, "B", ["big"], nbytes=10_000)
    out = sim._step(sim.s.replicate(C, 1, ["x"], 2, sim.now))
    assert replicates(out) == {("C", "A", "x")}        # C holds least
    out = sim.worker("C", m.Replicated(["x"], []))
    assert replies(out)[0].result["copied"] == 1
    out = sim._step(sim.s.replicate(C, 2, ["x"], 1, sim.now))
    [reply] = replies(out)                             # nothing to wait for
    assert reply.result["freed"] == 1 and len(holders(sim, "x")) == 1
    assert len(frees(out)) == 1


def test_a_copy_whose_worker_leaves_counts_as_failed_and_the_request_is_answered():
    sim = Sim(("A", "B"))
    results_on(sim, "A", ["x"])
    sim._step(sim.s.replicate(C, 3, ["x"], None, sim.now))
    out = sim.remove_worker("B")
    [reply] = replies(out)
    assert reply.result["failed"] == 1 and reply.result["copied"] == 0


def test_rebalance_moves_results_and_frees_the_source_only_once_copied():
    sim = Sim(("A", "B"))
    results_on(sim, "A", [f"x{i}" for i in range(4)])
    out = sim._step(sim.s.rebalance(C, 5, None, sim.now))
    moves = replicates(out)
    assert len(moves) == 2 and {(p, src) for p, src, _ in moves} == {("B", "A")}
    assert not frees(out) and not replies(out)
    moved = sorted(k for _, _, k in moves)
    for k in moved:                                     # still held by A meanwhile
        assert holders(sim, k) == ["A"]
    out = sim.worker("B", m.Replicated(moved, []))
    assert frees(out) == {("A", k) for k in moved}
    [reply] = replies(out)
    assert reply.result["freed"] == 2 and reply.result["moved_bytes"] == 200
    assert sim.s.workers["A"].nbytes == sim.s.workers["B"].nbytes == 200
    for k in moved:
        assert holders(sim, k) == ["B"]


def test_rebalance_of_a_balanced_cluster_or_of_named_keys_moves_only_what_it_must():
    sim = Sim(("A", "B"))
    results_on(sim, "A", ["a0", "a1"])
    results_on(sim, "B", ["b0", "b1"])
    out = sim._step(sim.s.rebalance(C, 1, None, sim.now))
    assert not replicates(out) and replies(out)[0].result["copied"] == 0
    results_on(sim, "A", ["a2", "a3"])
    out = sim._step(sim.s.rebalance(C, 2, ["a0", "nope"], sim.now))
    assert {k for _, _, k in replicates(out)} == {"a0"}   # only the one named
    assert replies(out) == []
    out = sim.worker("B", m.Replicated([], ["a0"]))       # the copy failed: A keeps it
    assert not frees(out) and holders(sim, "a0") == ["A"]
    assert replies(out)[0].result == {"copied": 0, "failed": 1, "freed": 0, "moved_bytes": 0,
                                      "missing": ["nope"]}


def test_a_result_released_while_it_moves_is_not_freed_twice():
    sim = Sim(("A", "B"))
    results_on(sim, "A", ["x0", "x1"], nbytes=1000)
    out = sim._step(sim.s.rebalance(C, 1, None, sim.now))
    [(_, _, key)] = replicates(out)
    sim.release(key)                                     # freed on A by the release
    out = sim.worker("B", m.Replicated([key], []))
    assert frees(out) == {("B", key)}                    # the copy arrived too late
    assert replies(out)[0].result["freed"] == 0


def test_restart_answers_requests_under_way():
    sim = Sim(("A", "B"))
    results_on(sim, "A", ["x"])
    sim._step(sim.s.replicate(C, 9, ["x"], None, sim.now))
    out = sim._step(sim.s.restart("test", sim.now))
    assert replies(out)[0].request_id == 9
