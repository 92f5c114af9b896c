"""Worker resources in the pure scheduler state: a task that needs resources runs only where
they are free, holds them while it runs (released at every end), waits visibly when no worker
has enough, starts when one joins, and is never stolen by a worker without them. Every step is
validated (``Sim``), including the rule that a worker's free amounts are what it has less what
its tasks hold."""

from __future__ import annotations

import pytest

from nbcluster.errors import ProtocolError
from nbcluster.protocol import messages as m

from test_scheduler_state import C, Sim, computes, frees, spec, to_client

pytestmark = pytest.mark.timeout(10)


def gpu(key, n=1, **options):
    return spec(key, options={"resources": {"GPU": n}, **options})


def add(sim, addr, nthreads=1, **resources):
    ident = {"address": addr, **({"resources": resources} if resources else {})}
    return sim._step(sim.s.add_worker(addr, nthreads, addr, ident, sim.now))


def sim_with_gpu(gpus=1, nthreads=1):
    sim = Sim(("A",), nthreads=nthreads)
    add(sim, "G", nthreads, GPU=gpus)
    return sim


def note(sim):
    return sim.s.resources_info()["note"]


def test_tasks_that_need_a_gpu_run_only_where_one_is_free_one_at_a_time():
    sim = sim_with_gpu()
    out = sim.submit(*[gpu(f"g-{i}") for i in range(3)], *[spec(f"p-{i}") for i in range(4)])
    placed = computes(out)
    assert [k for k in placed if k.startswith("g")] == ["g-0"] and placed["g-0"] == "G"
    assert {placed[f"p-{i}"] for i in range(4)} == {"A", "G"}     # the rest go anywhere
    assert sim.state("g-1") == sim.state("g-2") == "queued"
    assert sim.s.workers["G"].free == {"GPU": 0.0}
    assert sim.s.resources_info()["waiting"] == 2 and note(sim) == ""
    out = sim.finish("G", "g-0")                    # the GPU is free again: the next one
    assert {k: w for k, w in computes(out).items() if k.startswith("g")} == {"g-1": "G"}


@pytest.mark.parametrize("end", ["finish", "fail", "cancel", "release"])
def test_every_end_of_a_task_gives_its_resources_back(end):
    sim = sim_with_gpu()
    sim.submit(gpu("g-0"), gpu("g-1"))
    sim.started("G", "g-0")
    if end == "finish":
        out = sim.finish("G", "g-0")
    elif end == "fail":
        out = sim.fail("G", "g-0")
    elif end == "cancel":
        out = sim.client(m.Cancel(["g-0"]))
        assert ("G", "g-0") in frees(out)
    else:                                           # nobody wants it any more: forgotten
        out = sim.release("g-0")
        assert sim.state("g-0") == "forgotten"
    assert computes(out) == {"g-1": "G"}
    assert sim.s.workers["G"].free == {"GPU": 0.0}


def test_a_task_moved_off_a_paused_worker_takes_its_resources_along():
    sim = Sim(("A",))
    add(sim, "G", GPU=2)
    sim.submit(gpu("g-0"), gpu("g-1"))              # both on G (one thread: one waits)
    assert sim.where("g-0") == sim.where("g-1") == "G"
    sim.started("G", "g-0")
    add(sim, "H", GPU=1)
    out = sim.worker("G", m.Status("paused", "memory"))
    assert computes(out) == {"g-1": "H"}            # not to A, which has no GPU
    assert sim.s.workers["G"].free == {"GPU": 1.0} and sim.s.workers["H"].free == {"GPU": 0.0}


def test_a_request_no_worker_can_satisfy_waits_is_reported_and_starts_when_one_joins():
    sim = sim_with_gpu(gpus=1)
    out = sim.submit(gpu("big-0", 2), gpu("big-1", 2), spec("x",
                     options={"resources": {"TPU": 1}}))
    assert not computes(out)
    assert sim.state("big-0") == "queued"
    assert note(sim) == "3 tasks wait for resources no worker has: GPU=2; TPU=1"
    assert sim.s.resources_info()["impossible"] == {"GPU=2": 2, "TPU=1": 1}
    out = add(sim, "G2", GPU=2)
    assert computes(out) == {"big-0": "G2"}
    assert note(sim) == "1 task waits for resources no worker has: TPU=1"
    out = sim.finish("G2", "big-0")
    assert computes(out) == {"big-1": "G2"}
    sim.client(m.Cancel(["x"]))                     # a cancelled one is no longer reported
    assert note(sim) == ""


def test_tasks_of_a_worker_that_dies_wait_for_another_with_the_resources():
    sim = sim_with_gpu()
    sim.submit(gpu("g-0"), gpu("g-1"))
    sim.started("G", "g-0")
    out = sim.remove_worker("G")
    assert not computes(out)
    assert note(sim) == "2 tasks wait for resources no worker has: GPU=1"
    out = add(sim, "H", GPU=1)
    assert len([k for k in computes(out)]) == 1 and set(computes(out).values()) == {"H"}


def test_stealing_never_moves_a_task_to_a_worker_without_its_resources():
    sim = Sim(("A",))
    add(sim, "G", GPU=4)
    sim.submit(*[gpu(f"g-{i}") for i in range(4)])
    assert all(sim.where(f"g-{i}") == "G" for i in range(4))
    sim.started("G", "g-0")
    out = sim.finish("G", "g-0", duration=0.05)     # long tasks: worth stealing ...
    assert not computes(out)                        # ... but A has no GPU
    assert all(sim.where(f"g-{i}") == "G" for i in range(1, 4))
    out = add(sim, "H", GPU=1)                      # H has one: it steals one task
    assert list(computes(out).values()) == ["H"]
    assert sim.s.workers["H"].free == {"GPU": 0.0} and sim.s.workers["G"].free == {"GPU": 2.0}


def test_queues_pinned_workers_and_limits_combine_with_resources():
    sim = Sim(("A",))
    sim._step(sim.s.add_worker("G", 1, "G", {"address": "G", "queues": ["gpu"],
                                             "resources": {"GPU": 1}}, sim.now))
    add(sim, "H", GPU=1)
    out = sim.submit(gpu("q-0", queue="gpu"), gpu("p-0", workers=["H"]))
    assert computes(out) == {"q-0": "G", "p-0": "H"}
    out = sim.submit(gpu("q-1", queue="other"))     # no worker of that queue has a GPU
    assert not computes(out) and "GPU=1" in note(sim)
    sim.finish("G", "q-0")
    sim.finish("H", "p-0")
    out = sim.submit(*[gpu(f"lim-{i}", concurrency=1) for i in range(3)])
    assert len(computes(out)) == 1
    [(key, where)] = computes(out).items()
    out = sim.finish(where, key)
    assert len(computes(out)) == 1


def test_a_limited_task_waiting_for_a_worker_with_resources_still_keeps_to_its_limit():
    sim = Sim(("A",))
    sim.submit(*[gpu(f"lim-{i}", concurrency=1) for i in range(3)])
    assert "3 tasks wait" in note(sim)
    out = add(sim, "G", nthreads=4, GPU=4)
    assert len(computes(out)) == 1                    # not three: concurrency=1
    [(key, where)] = computes(out).items()
    assert len(computes(sim.finish(where, key))) == 1


def test_restart_frees_every_resource():
    sim = sim_with_gpu()
    sim.submit(gpu("g-0"), gpu("g-1"), gpu("big", 5))
    sim._step(sim.s.restart("test", sim.now))
    assert sim.s.workers["G"].free == {"GPU": 1.0}
    assert sim.s.resources_info() == {"waiting": 0, "impossible": {}, "note": ""}
    out = sim.submit(gpu("g-2"))
    assert computes(out) == {"g-2": "G"}


def test_bad_requests_and_bad_worker_resources_are_refused_by_name():
    sim = sim_with_gpu()
    with pytest.raises(ProtocolError, match="resources"):
        sim.submit(spec("x", options={"resources": {"GPU": 0}}))
    with pytest.raises(ProtocolError, match="resources"):
        sim.submit(spec("y", options={"resources": {"1GPU": 1}}))
    with pytest.raises(ProtocolError, match="worker W: bad resources"):
        sim.s.add_worker("W", 1, "W", {"address": "W", "resources": {"GPU": -1}}, sim.now)
    assert "W" not in sim.s.workers


def test_a_client_hears_of_a_result_computed_where_the_resource_was():
    sim = sim_with_gpu()
    sim.submit(gpu("g-0"))
    out = sim.finish("G", "g-0", value=3)
    assert "g-0" in to_client(out, m.Done, C)
