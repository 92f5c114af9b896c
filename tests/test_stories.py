"""client.story(key) answers why a task is where it is: every transition is recorded, by
default, with the stimulus (which batch of which peer, a timer, a worker leaving) that caused
it, in a record bounded over all tasks."""

from __future__ import annotations

import pytest

from nbcluster.protocol import messages as m
from nbcluster.state import scheduler_state
from test_scheduler_state import C, Sim, spec

pytestmark = pytest.mark.timeout(60)


def whats(sim, key):
    return [(what, where) for _, what, where, _ in sim.s.story(key)]


def test_stories_are_on_by_default_and_name_their_stimulus():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.started("A", "x")
    sim.remove_worker("A")
    sim.add_worker("B")
    sim.finish("B", "x")
    sim.release("x")
    assert whats(sim, "x") == [("submitted", C), ("processing", "A"), ("rescheduled", "A"),
                               ("processing", "B"), ("memory", "B"), ("forgotten", None)]
    stimuli = [stimulus for *_, stimulus in sim.s.story("x")]
    assert stimuli[0].startswith(f"{C}#") and stimuli[2].startswith("A left#")
    assert stimuli[3].startswith("B joined#") and stimuli[4].startswith("B#")
    assert len(set(stimuli)) == 5               # one id per incoming batch or event
    assert sim.s.story("nope") == []


def test_a_story_says_why_a_task_failed_and_what_it_blamed():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    sim.fail("A", "x")
    assert whats(sim, "x")[-2:] == [("failed", "A"), ("erred", "x")]
    assert whats(sim, "y") == [("submitted", C), ("erred", "x")]   # blamed on its input
    sim.client(m.Cancel(["y"]))
    sim.submit(spec("z"))
    sim.client(m.Cancel(["z"]))
    assert whats(sim, "z")[-1] == ("cancelled", f"cancelled by {C}")


def test_the_record_is_bounded(monkeypatch):
    monkeypatch.setattr(scheduler_state, "STORY_LENGTH", 10)
    sim = Sim(("A",))
    sim.submit(*[spec(f"t{i}") for i in range(20)])
    assert len(sim.s.stories) == 10
    assert sim.s.story("t10") == [] and whats(sim, "t19") == [("submitted", C)]   # oldest gone


def test_client_story_over_a_cluster(client):
    future = client.submit(sum, [1, 2])
    assert future.result() == 3
    story = client.story(future)
    assert [row[1] for row in story] == ["submitted", "processing", "memory"]
    assert story[1][2] in client.scheduler_info()["workers"]
    assert all(isinstance(row[3], str) and "#" in row[3] for row in story)
