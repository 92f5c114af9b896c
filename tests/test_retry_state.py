"""``client.retry``: the RETRY message in the scheduler's state machine (no sockets, no time)."""

from __future__ import annotations

from nbcluster.protocol import messages as m
from test_scheduler_state import C, Sim, computes, sent, spec, to_client


def test_retry_reruns_a_failed_task_and_reports_its_new_result():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    out = sim.fail("A", "x")
    assert set(to_client(out, m.Erred)) == {"x"}
    out = sim.client(m.RetryTasks(["x"]))
    assert computes(out) == {"x": "A"} and sim.state("x") == "processing"
    assert sim.s.tasks["x"].exception is None
    out = sim.finish("A", "x", value=5)
    assert to_client(out, m.Done)["x"].value == 5


def test_retry_of_a_dependent_reruns_the_failed_input_it_blamed():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]), spec("z", deps=["x"]))
    out = sim.fail("A", "x")
    assert set(to_client(out, m.Erred)) == {"x", "y", "z"}
    out = sim.client(m.RetryTasks(["y"]))
    assert computes(out) == {"x": "A"}             # the input first
    assert sim.state("y") == "waiting" and sim.state("z") == "erred"   # z was not asked for
    out = sim.finish("A", "x")
    assert computes(out) == {"y": "A"}
    out = sim.finish("A", "y", value=2)
    assert set(to_client(out, m.Done)) == {"y"}


def test_retry_restores_the_retry_budget():
    sim = Sim(("A",))
    sim.submit(spec("x", options={"retries": 1}))
    sim.worker("A", m.Failed("x", None, "tb", sim.now, sim.now, {"delay": None, "max": None},
                     sim.run_of("x")))
    assert sim.state("x") == "processing"          # its own retry
    sim.fail("A", "x")
    assert sim.state("x") == "erred" and sim.s.tasks["x"].retries_left == 0
    sim.client(m.RetryTasks(["x"]))
    assert sim.s.tasks["x"].retries_left == 1


def test_retry_of_unknown_finished_or_running_keys():
    sim = Sim(("A",))
    sim.submit(spec("done"), spec("running"))
    sim.finish("A", "done", value=1)
    out = sim.client(m.RetryTasks(["done", "running", "gone"]))
    assert type(to_client(out, m.Done)["done"]) is m.Done      # told again where it is
    assert set(to_client(out, m.Cancelled)) == {"gone"}
    assert not computes(out) and sim.state("running") == "processing"
    assert not sent(out, "A")


def test_retry_is_refused_from_a_worker():
    import pytest

    from nbcluster.errors import ProtocolError

    sim = Sim(("A",))
    with pytest.raises(ProtocolError):
        sim.s.handle("A", [m.RetryTasks(["x"])], sim.now)
    assert C in sim.s.clients
