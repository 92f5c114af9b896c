"""Placement and stealing with many workers: the scheduler keeps which workers have room up to
date as tasks move (nbcluster/state/occupancy.py) instead of scanning every worker. These pure
tests check that it decides as a scan of all workers would, and that its heaps stay bounded."""

from __future__ import annotations

import random

import pytest

from nbcluster.protocol import messages as m
from test_scheduler_state import Sim, computes, spec

pytestmark = pytest.mark.timeout(60)


def scan_least_loaded(state, queue):
    workers = [w for w in state.workers.values() if queue in w.queues and not w.paused]
    return min(workers, key=lambda w: (len(w.processing) / w.nthreads, w.assigned, w.index),
               default=None)


def check_occupancy(state):
    occ = state.occupancy
    for queue in {q for w in state.workers.values() for q in w.queues}:
        assert occ.least_loaded(queue) is scan_least_loaded(state, queue)
    assert set(occ.idle) == {w for w in state.workers.values()
                             if not w.paused and len(w.processing) < w.nthreads}
    assert set(occ.paused) == {w for w in state.workers.values() if w.paused}
    busy = sorted((w for w in state.workers.values() if len(w.processing) > w.nthreads),
                  key=lambda w: (-len(w.processing) / w.nthreads, w.index))
    assert occ.busiest(len(busy) + 1) == busy
    bound = 2 * len(state.workers) + 64
    assert all(len(h) <= bound for h in occ.by_queue.values()) and len(occ.busy) <= bound


def test_many_workers_each_take_one_of_a_few_tasks():
    workers = [f"w{i}" for i in range(200)]
    sim = Sim(workers, nthreads=4)
    out = sim.submit(*[spec(f"t{i}") for i in range(100)])
    assert len(set(computes(out).values())) == 100        # the least loaded first: all apart
    assert set(computes(out).values()) == set(workers[:100])   # ties: the earliest to join
    check_occupancy(sim.s)


def test_random_steps_decide_as_a_scan_of_all_workers_would():
    rng = random.Random(7)
    workers = [f"w{i}" for i in range(12)]
    sim = Sim(workers, nthreads=2)
    running: list[tuple[str, str]] = []
    for step in range(400):
        roll = rng.random()
        if roll < 0.45:
            keys = [f"s{step}-{i}" for i in range(rng.randint(1, 6))]
            for key, worker in computes(sim.submit(*[spec(k) for k in keys])).items():
                running.append((worker, key))
        elif roll < 0.85 and running:
            worker, key = running.pop(rng.randrange(len(running)))
            if sim.where(key) == worker:
                out = sim.finish(worker, key)
                running += [(w, k) for k, w in computes(out).items()]
                sim.release(key)
        elif roll < 0.93:
            w = rng.choice(workers)
            sim.worker(w, m.Status(rng.choice(["paused", "running"]), ""))
        else:   # a worker leaves and comes back: its tasks are placed again
            w = rng.choice(workers)
            out = sim.remove_worker(w)
            running = [(x, k) for x, k in running if x != w]
            running += [(x, k) for k, x in computes(out).items()]
            out = sim.add_worker(w, 2)
            running += [(x, k) for k, x in computes(out).items()]
        check_occupancy(sim.s)


def test_idle_workers_steal_from_a_busy_one_at_scale():
    workers = [f"w{i}" for i in range(300)]
    sim = Sim(workers, nthreads=1)
    sim.submit(spec("seed"))
    sim.finish("w0", "seed", nbytes=2_000_000)     # a large input: its dependents go to w0
    sim.s.prefix_durations["u"] = 1.0              # long tasks: worth moving 2 MB for
    sim.s.long_prefixes.add("u")
    out = sim.submit(*[spec(f"u-{i}", deps=["seed"]) for i in range(40)])
    placed = computes(out)
    on_w0 = [k for k, w in placed.items() if w == "w0"]
    assert len(on_w0) == 40 - 39 and len(sim.s.workers["w0"].processing) == 1
    thieves = {w for k, w in placed.items() if w != "w0"}
    assert thieves == {f"w{i}" for i in range(1, 40)}        # the earliest idle ones
    assert placed["u-39"] == "w1"                  # what would have run last went first
    assert ["stolen", "w1"] == [row[1:3] for row in sim.s.story("u-39")][-1]
    check_occupancy(sim.s)


def test_one_stealing_pass_does_bounded_work():
    from nbcluster.state import placement

    workers = [f"w{i}" for i in range(200)]
    sim = Sim(workers, nthreads=1)
    sim.submit(spec("seed"))
    sim.finish("w0", "seed", nbytes=2_000_000)
    sim.s.prefix_durations["u"] = 1.0
    sim.s.long_prefixes.add("u")
    out = sim.submit(*[spec(f"u-{i}", deps=["seed"]) for i in range(150)])
    stolen = [k for k, w in computes(out).items() if w != "w0"]
    assert len(stolen) == placement.STEAL_THIEVES       # the rest wait for the next pass
    out = sim.finish("w0", on_w0_running(sim))
    assert len([k for k, w in computes(out).items() if w != "w0"]) == placement.STEAL_THIEVES
    check_occupancy(sim.s)


def on_w0_running(sim):
    [ts] = [ts for ts in sim.s.workers["w0"].processing if ts.run_id == min(
        t.run_id for t in sim.s.workers["w0"].processing)]
    return ts.key


def test_stealing_is_skipped_while_no_function_runs_long_enough_to_be_worth_moving():
    """The functions worth stealing from follow their recent run time: a pass returns before
    looking at victims while there are none (every expected run time is below the cost of a
    move), and looks again once a function's tasks grow long."""
    sim = Sim([f"w{i}" for i in range(2)], nthreads=1)
    sim.submit(*[spec(f"u-{i}") for i in range(9)])
    assert not sim.s.long_prefixes
    sim.finish(sim.where("u-0"), "u-0", duration=0.05)           # 50 ms: worth a move
    assert sim.s.long_prefixes == {"u"}
    for i in range(1, 9):                                        # then short ones again
        sim.finish(sim.where(f"u-{i}"), f"u-{i}", duration=0.0001)
    assert sim.s.prefix_durations["u"] < 0.002 and not sim.s.long_prefixes
