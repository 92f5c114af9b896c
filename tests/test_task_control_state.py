"""Queues, priorities, retries, limits, timers and collected errors in the scheduler's state
machine, with a fake clock (``sim.clock``): no waiting, time is data."""

import random

import pytest

from nbcluster.errors import TaskExpiredError
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps, loads
from nbcluster.state.gates import Limit, backoff, queue_typo
from test_scheduler_state import C, FN, Sim, sent, spec
from test_scheduler_state import computes as computed


def add_worker(sim, addr, queues, nthreads=1):
    sim._step(sim.s.add_worker(addr, nthreads, addr, {"address": addr, "queues": queues},
                               sim.now))


def wake(sim, when):
    """The clock moves on to ``when``, and what is due by then happens."""
    sim.now = when
    return sim._step(sim.s.wake(sim.now))


def retry_fail(sim, addr, key, delay=None, maximum=None):
    return sim.worker(addr, m.Failed(key, dumps(ConnectionError("flaky")),
                             "Traceback ...\nConnectionError: flaky", sim.now, sim.now + 0.001,
                             {"delay": delay, "max": maximum}, sim.run_of(key)))


# ---------------------------------------------------------------------- queues and priorities
def test_tasks_run_only_on_workers_subscribed_to_their_queue():
    sim = Sim(workers=())
    add_worker(sim, "A", ["default"])
    add_worker(sim, "H", ["high"])
    out = sim.submit(spec("d1"), spec("h1", options={"queue": "high"}),
                     spec("h2", options={"queue": "high"}))
    assert computed(out)["d1"] == "A"
    assert computed(out)["h1"] == "H" and computed(out)["h2"] == "H"


def test_a_queue_with_no_worker_holds_its_tasks_until_one_subscribes():
    sim = Sim(workers=("A",))
    out = sim.submit(spec("x", options={"queue": "gpu"}))
    assert computed(out) == {}
    assert sim.state("x") == "queued"
    info = sim.s.queues_info()
    assert info["gpu"] == {"queued": 1, "processing": 0, "workers": []}
    add_worker(sim, "G", ["gpu"])
    assert sim.where("x") == "G"
    assert sim.s.queues_info()["gpu"]["processing"] == 1


def test_priority_order_within_a_queue_fifo_among_equals():
    sim = Sim(workers=())
    sim.submit(*[spec(f"t{i}", options={"priority": p})
                 for i, p in enumerate([0, 5, 0, 5, 9])])
    sim.s.avg_duration = 10.0            # long tasks: the window is one queued task per thread
    out = sim.add_worker("A")
    assert [msg.key for msg in sent(out, "A", m.Compute)] == ["t4", "t1"]
    out = sim.finish("A", "t4")
    assert [msg.key for msg in sent(out, "A", m.Compute)] == ["t3"]
    out = sim.finish("A", "t1")
    assert [msg.key for msg in sent(out, "A", m.Compute)] == ["t0"]


def test_misspelt_queue_on_a_worker_is_named():
    assert "did you mean 'high'" in queue_typo(["hgih"], {"default", "high"})
    assert queue_typo(["gpu"], {"default", "high"}) is None      # a new queue is fine
    assert queue_typo(["default"], {"default"}) is None


# ---------------------------------------------------------------------- retries
def test_retry_with_exponential_backoff_then_failure():
    sim = Sim(workers=("A",))
    sim.submit(spec("x", options={"retries": 2, "retry_backoff": 1.0, "retry_jitter": False}))
    t0 = sim.now
    retry_fail(sim, "A", "x")
    assert sim.state("x") == "delayed"
    assert sim.s.next_wakeup() == pytest.approx(t0 + 1.0, abs=0.01)   # base
    out = wake(sim, t0 + 0.5)
    assert computed(out) == {} and sim.state("x") == "delayed"
    out = wake(sim, t0 + 1.01)
    assert computed(out) == {"x": "A"}
    t1 = sim.now
    retry_fail(sim, "A", "x")
    assert sim.s.next_wakeup() == pytest.approx(t1 + 2.0, abs=0.01)   # 2 * base
    wake(sim, t1 + 2.01)
    out = retry_fail(sim, "A", "x")                                     # budget spent
    assert sim.state("x") == "erred"
    [erred] = sent(out, C, m.Erred)
    assert isinstance(loads(erred.exception), ConnectionError)
    attempts = sim.s.attempts("x")
    assert len(attempts) == 3 and all(a[3] == "ConnectionError: flaky" for a in attempts)


def test_backoff_cap_and_jitter():
    rng = random.Random(1)
    assert [backoff(1.0, n, None, False, rng) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(1.0, 10, 30.0, False, rng) == 30.0
    draws = [backoff(2.0, 3, None, True, rng) for _ in range(200)]
    assert all(0 <= d <= 8.0 for d in draws) and max(draws) > 4 and min(draws) < 4


def test_failure_not_marked_retryable_is_final():
    sim = Sim(workers=("A",))
    sim.submit(spec("x", options={"retries": 3}))
    sim.fail("A", "x")            # the worker found it does not match retry_on: retry None
    assert sim.state("x") == "erred"


def test_explicit_retry_request_without_budget_is_limited():
    sim = Sim(workers=("A",))
    sim.submit(spec("x"))
    for i in range(2):
        retry_fail(sim, "A", "x", delay=0.0, maximum=2)
        assert sim.state("x") == "processing", i      # delay 0: straight back
    retry_fail(sim, "A", "x", delay=0.0, maximum=2)
    assert sim.state("x") == "erred"


def test_worker_death_counts_as_a_failed_attempt():
    sim = Sim(workers=("A", "B"))
    sim.submit(spec("x", options={"retries": 1}))
    where = sim.where("x")
    sim.started(where, "x")
    sim.remove_worker(where)
    ts = sim.s.tasks["x"]
    assert ts.retries_left == 0 and ts.state == "processing"
    assert sim.s.attempts("x")[0][3].startswith("the worker")


# ---------------------------------------------------------------------- limits
def test_rate_limit_spaces_starts_across_the_cluster():
    sim = Sim(workers=("A", "B"), nthreads=4)
    t0 = sim.now
    # keys are "<function name>-<id>": a rate limit without limit_key is per function
    out = sim.submit(*[spec(f"r-{i}", options={"rate": [10, 1.0]}) for i in range(5)],
                     spec("free"))
    started = computed(out)
    assert "free" in started                   # other tasks pass the held ones
    assert [k for k in started if k.startswith("r")] == ["r-0"]
    starts = [t0]
    while len(starts) < 5:
        when = sim.s.next_wakeup()
        assert when is not None
        out = sim.wake()                       # the clock moves to the next start
        new = [k for k in computed(out) if k.startswith("r")]
        assert len(new) == 1
        starts.append(when)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g == pytest.approx(0.1, abs=0.005) for g in gaps)


def test_concurrency_cap_and_shared_limit_key_and_set_limit():
    sim = Sim(workers=("A",), nthreads=8)
    out = sim.submit(*[spec(f"a{i}", options={"limit_key": "db", "concurrency": 2})
                       for i in range(3)],
                     spec("b0", fn=FN, options={"limit_key": "db", "limit_key_only": True}))
    running = [k for k in computed(out)]
    assert len(running) == 2
    out = sim.finish("A", running[0])
    assert len(computed(out)) == 1             # one more under the cap of 2
    out = sim.client(m.SetLimit("db", None, 4))
    assert len(computed(out)) == 1             # raised cap: the last held one goes
    assert sim.s.limits_info()["db"]["concurrency"] == 4


def test_limit_token_bucket():
    lim = Limit("k")
    lim.set([2, 1.0], None)
    assert lim.can_start(0.0)
    lim.started(0.0)
    assert not lim.can_start(0.2) and lim.can_start(0.5)


# ---------------------------------------------------------------------- timers
def test_countdown_delays_the_start():
    sim = Sim(workers=("A",))
    out = sim.submit(spec("x", options={"not_before": sim.now + 5}))
    assert computed(out) == {} and sim.state("x") == "delayed"
    assert computed(wake(sim, sim.now + 4.9)) == {}
    assert computed(wake(sim, sim.now + 0.2)) == {"x": "A"}


def test_expires_fails_a_task_that_has_not_started():
    sim = Sim(workers=())
    out = sim.submit(spec("x", options={"expires": sim.now + 1}))
    assert sim.state("x") == "queued"
    out = wake(sim, sim.now + 1.5)
    assert sim.state("x") == "erred"
    [erred] = sent(out, C, m.Erred)
    assert isinstance(loads(erred.exception), TaskExpiredError)


def test_expired_task_is_not_started_when_a_worker_comes():
    sim = Sim(workers=())
    sim.submit(spec("x", options={"expires": sim.now + 1}))
    sim.now += 2
    out = sim.add_worker("A")
    assert computed(out) == {} and sim.state("x") == "erred"


def test_worker_options_carry_timeout_and_retry_rules():
    sim = Sim(workers=("A",))
    out = sim.submit(spec("x", options={"timeout": 2.5, "retries": 1}))
    [msg] = sent(out, "A", m.Compute)
    assert msg.options == {"timeout": 2.5, "retries": 1}


# ---------------------------------------------------------------------- collected errors
def test_collect_errors_runs_the_callback_with_the_exceptions():
    sim = Sim(workers=("A",), nthreads=4)
    sim.submit(spec("h0"), spec("h1"),
               spec("cb", deps=["h0", "h1"], options={"collect_errors": True}),
               spec("plain", deps=["h0", "h1"]))
    sim.finish("A", "h0")
    out = sim.fail("A", "h1")
    assert sim.state("plain") == "erred"                # the default: first error wins
    [msg] = [msg for msg in sent(out, "A", m.Compute) if msg.key == "cb"]
    assert set(msg.deps) == {"h0"}                        # erred input not fetched...
    assert isinstance(loads(msg.options["errors"]["h1"]), ValueError)   # ...but given in place
