"""Periodic tasks (issue 15): the rule's times (cron against a brute-force search), the pure
state's runs, skips and kept results, the journal taking schedules across a restart, and the
client API on an in-process cluster."""

from __future__ import annotations

import datetime
import random
import threading

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.jupyter.html import snapshot_html
from nbcluster.jupyter.models import ClusterSnapshot
from nbcluster.protocol import messages as m
from nbcluster.state import journal as jstate
from nbcluster.state.cron import parse_cron
from nbcluster.state.periodic import PREFIX
from nbcluster.state.periodic import info as periodic_info

from test_journal import Kept
from test_scheduler_state import FN, Sim, spec

pytestmark = pytest.mark.timeout(60)
UTC = datetime.timezone.utc


def _brute_next(cron, t):
    minute = int(t // 60) + 1
    while True:
        dt = datetime.datetime.fromtimestamp(minute * 60, UTC)
        weekday = (dt.weekday() + 1) % 7
        in_month, in_week = dt.day in cron.days, weekday in cron.weekdays
        day = (in_month and in_week) if (cron.any_day or cron.any_weekday) else \
            (in_month or in_week)
        if dt.minute in cron.minutes and dt.hour in cron.hours and dt.month in cron.months \
                and day:
            return minute * 60.0
        minute += 1


@pytest.mark.parametrize("text", ["0 * * * *", "*/7 */5 * * *", "0 12 1,15 * *",
                                  "15 3 * * sun", "0 0 13 * fri", "5 4 * jan-mar 1-3"])
def test_cron_next_times_match_a_minute_by_minute_search(text):
    cron, rng = parse_cron(text), random.Random(text)
    for _ in range(10):
        t = rng.uniform(0, 2e9)
        assert cron.next_after(t) == _brute_next(cron, t)


def test_rare_dates_come_up():
    leap = parse_cron("30 2 29 2 *").next_after(
        datetime.datetime(2026, 11, 28, tzinfo=UTC).timestamp())
    assert datetime.datetime.fromtimestamp(leap, UTC) == datetime.datetime(2028, 2, 29, 2, 30,
                                                                           tzinfo=UTC)
    new_year = parse_cron("* * * * *").next_after(
        datetime.datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC).timestamp())
    assert datetime.datetime.fromtimestamp(new_year, UTC).year == 2027


@pytest.mark.parametrize("text, error", [
    ("* * *", "five fields"), ("61 * * * *", "minute 61 is outside 0-59"),
    ("0 0 31 2 *", "never matches"), ("*/0 * * * *", "step '0'"),
    ("5-1 * * * *", "runs backwards"), ("0 0 * foo *", "month 'foo' is not a number")])
def test_a_bad_cron_is_refused_naming_the_field(text, error):
    with pytest.raises(ValueError, match=error):
        parse_cron(text)


def schedule(sim, name, every=None, cron=None, overlap=False, keep=1, start=None, rid=1):
    return sim.client(m.Schedule(rid, name, spec("template"), every, cron, overlap, keep, start))


def test_runs_start_on_time_skip_while_one_runs_and_keep_the_last_results():
    sim = Sim(("A",))
    out = schedule(sim, "tick", every=10.0)
    reply = next(msg for _, msg in out if type(msg) is m.Reply)
    assert reply.ok and reply.result["next"][0] > sim.now
    first = [msg.key for _, msg in out if type(msg) is m.Compute]
    assert len(first) == 1 and first[0].startswith("tick-")     # starts now
    sim.now += 10
    sim.wake()                                    # the first still runs: skipped
    p = sim.s.durable.periodics["tick"]
    assert p.skipped == 1 and p.history[-1]["state"] == "skipped"
    sim.finish("A", first[0])
    sim.now += 10
    second = [msg.key for _, msg in sim.wake() if type(msg) is m.Compute]
    assert len(second) == 1
    sim.finish("A", second[0])
    sim.now += 10
    sim.wake()                                     # keep=1: the first run's result goes
    assert first[0] not in sim.s.tasks and second[0] in sim.s.tasks
    assert PREFIX + "tick" in sim.s.tasks[second[0]].who_wants
    runs = periodic_info(sim.s, p)["runs"]
    assert [r["state"] for r in runs] == ["memory", "skipped", "memory", "processing"]


def test_a_late_wake_runs_once_and_counts_what_it_missed():
    sim = Sim(("A",))
    schedule(sim, "tick", every=10.0, overlap=True, start=sim.now + 5)
    sim.now += 100                                 # ten slots passed at once
    computes = [msg for _, msg in sim.wake() if type(msg) is m.Compute]
    p = sim.s.durable.periodics["tick"]
    assert len(computes) == 1 and p.skipped == 9 and p.next_at > sim.now


def test_bad_schedules_are_answered_with_an_error_and_change_nothing():
    sim = Sim(("A",))
    schedule(sim, "x", every=5.0)
    for kwargs, error in [(dict(name="x", every=5.0), "exists"),
                          (dict(name="y"), "exactly one of"),
                          (dict(name="y", every=1.0, cron="* * * * *"), "exactly one of"),
                          (dict(name="y", cron="99 * * * *"), "minute 99")]:
        out = schedule(sim, **kwargs, rid=7)
        (reply,) = [msg for _, msg in out if type(msg) is m.Reply]
        assert not reply.ok and error in reply.result and reply.request_id == 7
    assert set(sim.s.durable.periodics) == {"x"}
    out = sim.client(m.Unschedule(8, "nope"))
    assert not out[0][1].ok and "no schedule named 'nope'" in out[0][1].result


def test_cancel_stops_new_runs_and_lets_finished_results_go():
    sim = Sim(("A",))
    out = schedule(sim, "tick", every=10.0)
    (key,) = [msg.key for _, msg in out if type(msg) is m.Compute]
    sim.finish("A", key)
    sim.client(m.Unschedule(2, "tick"))
    assert "tick" not in sim.s.durable.periodics and key not in sim.s.tasks
    sim.now += 100
    assert not [msg for _, msg in sim.wake() if type(msg) is m.Compute]


def test_a_schedule_and_its_kept_result_survive_a_restart(tmp_path):
    k = Kept(tmp_path / "j.sqlite")
    out = k.client(m.Schedule(1, "hourly", spec("t"), None, "0 * * * *", False, 1, k.now))
    (key,) = [msg.key for _, msg in out if type(msg) is m.Compute]
    k.finish("A", key)
    next_at = k.s.durable.periodics["hourly"].next_at
    r = k.restart(workers=("A",))
    p = r.s.durable.periodics["hourly"]
    assert p.next_at == next_at and list(p.kept) == [key] and r.clients == set()
    assert PREFIX + "hourly" not in r.clients            # a schedule is no client
    r.step(r.s.remove_client("client-1", r.now))
    assert key in r.s.tasks                                # the schedule still wants it
    assert r.s.tasks[key].fn == FN
    r.step(jstate.resume_placement(r.s, r.now))


_TICKS: list = []
_TICKED = threading.Event()


def tick(x):     # module level: in-process workers find it by reference, shared state and all
    _TICKS.append(x)
    if len(_TICKS) >= 3:
        _TICKED.set()
    return len(_TICKS)


def test_client_schedule_runs_reports_and_cancels(tmp_path):
    count, ran = _TICKS, _TICKED
    with LocalCluster(n_workers=1, processes=False, dashboard=False) as cluster, \
            Client(cluster) as client:
        handle = client.schedule(tick, 5, every="50 ms", name="ticker", retries=1)
        assert ran.wait(10)
        assert handle.last_result(timeout=5) >= 1
        assert any(r["state"] == "memory" for r in handle.runs) and handle.skipped >= 0
        assert len(handle.next_runs) == 3 and "ticker" in repr(handle)
        handle.cancel()
        assert "ticker" not in client.schedules()
        client.schedule(tick, 1, every=1, name="dup")
        with pytest.raises(ValueError, match="exists"):
            client.schedule(tick, 1, every=1, name="dup")
        with pytest.raises(TypeError, match="exactly one of"):
            client.schedule(tick, 1)
        with pytest.raises(TypeError, match="countdown"):
            client.schedule(tick, 1, every=1, countdown=5)
        with pytest.raises(ValueError, match="minute 99"):
            client.schedule(tick, 1, cron="99 * * * *", name="c")
        info = client.schedules()["dup"]
        assert info["every"] == 1.0 and len(info["next"]) == 3
        status = ClusterSnapshot.from_info(client.scheduler_info())   # what %cluster status shows
        assert "Schedule dup: every 1 s, next" in status.text()
        assert "<code>dup</code>" in snapshot_html(status)
        client.unschedule("dup")
    assert count[:3] == [5, 5, 5]


def test_a_schedule_keeps_its_function_after_its_client_lets_go():
    sim = Sim(("A",))
    schedule(sim, "tick", every=10.0, start=sim.now + 5)
    sim.client(m.ReleaseFunctions([FN]))           # the client's cache let go of the token
    assert FN in sim.s.functions                   # the schedule still names it
    sim.now += 5
    assert [msg for _, msg in sim.wake() if type(msg) is m.Compute]
    sim.client(m.Unschedule(3, "tick"))
    assert FN in sim.s.functions                   # its run is still known


def test_an_asynchronous_client_schedules_with_await():
    import asyncio

    from nbcluster import AsyncClient

    async def main(cluster):
        async with AsyncClient(cluster) as client:
            handle = await client.schedule(tick, 7, every="50 ms", name="async-ticker")
            assert await handle.last_result(timeout=10) >= 1
            info = await handle.refresh()
            assert info["name"] == "async-ticker" and len(handle.next_runs) == 3
            assert "async-ticker" in await client.schedules()
            await handle.cancel()
            assert "async-ticker" not in await client.schedules()
            with pytest.raises(KeyError, match="async-ticker"):
                await client.unschedule("async-ticker")
            with pytest.raises(TypeError, match="exactly one of"):
                await client.schedule(tick, 1)

    with LocalCluster(n_workers=1, processes=False, dashboard=False) as cluster:
        asyncio.run(main(cluster))
