"""Widget views with a recording fake comm: what the front end would be sent."""

from __future__ import annotations

import itertools
import threading

import pytest

ipywidgets = pytest.importorskip("ipywidgets")
comm = pytest.importorskip("comm")

from nbcluster.jupyter.session import ClusterSession  # noqa: E402
from nbcluster.jupyter.widgets import ClusterWidget, progress_widget  # noqa: E402


class RecordingComm:
    """Stands in for a kernel comm: records every message a widget sends."""

    _ids = itertools.count()
    kernel = "fake"

    def __init__(self, log: list, **kwargs) -> None:
        self.comm_id = kwargs.get("comm_id") or f"comm-{next(self._ids)}"
        self.log = log
        self.opened = kwargs
        self._lock = threading.Lock()

    def open(self, *args, **kwargs) -> None:
        pass

    def on_msg(self, callback) -> None:
        self.callback = callback

    def send(self, data=None, metadata=None, buffers=None) -> None:
        with self._lock:
            self.log.append((self.comm_id, data))

    def close(self, *args, **kwargs) -> None:
        self.log.append((self.comm_id, "closed"))


@pytest.fixture
def comms(monkeypatch):
    log: list = []
    made: dict[str, RecordingComm] = {}

    def create_comm(**kwargs):
        c = RecordingComm(log, **kwargs)
        made[c.comm_id] = c
        return c

    monkeypatch.setattr(comm, "create_comm", create_comm)
    yield log, made


def updates(log: list, widget) -> list[dict]:
    cid = widget.comm.comm_id
    return [d["state"] for c, d in log if c == cid and isinstance(d, dict)
            and d.get("method") == "update"]


def test_progress_bar_follows_the_tasks_and_ends_green(comms, client):
    log, _ = comms
    futures = client.map(lambda x: x + 1, range(50))
    bar = progress_widget(futures, display=False, rate=20)
    assert bar.wait(10)
    row_bar, count = bar.view._rows["lambda"]
    assert (row_bar.value, row_bar.max, row_bar.bar_style) == (50, 50, "success")
    assert "50 / 50" in count.value and "erred" not in count.value
    sent = updates(log, row_bar)
    values = [s["value"] for s in sent if "value" in s]
    assert values and values[-1] == 50 and values == sorted(values)
    # throttled: far fewer messages than tasks
    assert len(values) < 25
    assert "data-state='done'" in bar.view.header.value
    assert bar.value == 1.0 and repr(bar) == "<ProgressBar 50/50, 0 erred>"


def test_progress_bar_shows_errors_in_red_per_function(comms, client):
    log, _ = comms

    def good(x):
        return x

    def bad(x):
        raise ValueError(x)

    futs = client.map(good, range(3)) + client.map(bad, range(2))
    bar = progress_widget(futs, display=False)
    assert bar.wait(10)
    good_bar, good_count = bar.view._rows["good"]
    bad_bar, bad_count = bar.view._rows["bad"]
    assert good_bar.bar_style == "success"
    assert bad_bar.bar_style == "danger" and bad_bar.value == 2
    assert "2 erred" in bad_count.value and "#c62828" in bad_count.value
    assert "2 erred" in bar.view.header.value
    assert any(s.get("bar_style") == "danger" for s in updates(log, bad_bar))


def test_progress_bar_is_shown_once_per_cell(comms, client, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    bar = progress_widget(client.map(lambda x: x, range(3)))
    bar._ipython_display_()          # the cell's last line: not shown again
    assert shown == [bar.widget]
    assert bar.wait(10)


@pytest.fixture
def session():
    s = ClusterSession()
    s.start(1, 1, processes=False, memory_limit=None)
    yield s
    s.stop()


def test_cluster_widget_scales_and_stops_from_its_buttons(comms, session):
    log, _ = comms
    view = ClusterWidget(session, poll=False)
    try:
        assert view.workers.value == 1
        assert "<b>1</b> workers" in view.table.value
        view.workers.value = 2
        view.scale_button.click()
        assert len(session.cluster.workers) == 2
        assert "<b>2</b> workers" in view.table.value and "2 workers" in view.message.value
        assert any("<b>2</b> workers" in s.get("value", "") for s in updates(log, view.table))
        view.stop_button.click()
        assert not session.running
        assert view.stop_button.disabled and view.scale_button.disabled
        assert "stopped" in view.table.value
    finally:
        view.close()


def test_cluster_widget_polls_until_the_session_stops(comms, session):
    log, _ = comms
    view = ClusterWidget(session, interval=0.02)
    changed = threading.Event()
    view.model.subscribe(lambda snap: changed.set())
    assert changed.wait(5)                       # the poller refreshed the table
    session.stop()                               # %cluster stop elsewhere
    assert not view.poller.running and "stopped" in view.table.value
    view.close()


def test_cluster_widget_explains_a_failed_scale(comms, session, monkeypatch):
    view = ClusterWidget(session, poll=False)
    try:
        view.scale(-1)
        assert "scale needs" in view.message.value and "#c62828" in view.message.value
        assert not view.scale_button.disabled
    finally:
        view.close()


def test_cluster_widget_box_follows_the_cluster_scaled_elsewhere(comms, session):
    log, _ = comms
    view = ClusterWidget(session, poll=False)
    try:
        assert view.workers.value == 1
        session.scale(3)                             # what %cluster scale 3 does
        assert view.workers.value == 3 and "<b>3</b> workers" in view.table.value
        assert any(s.get("value") == 3 for s in updates(log, view.workers))   # sent to the page
        session.cluster.scale(2)                     # cluster.scale() in a cell: the next poll
        view.refresh()
        assert view.workers.value == 2
        view.workers.value = 4                       # typed, Scale not pressed yet: kept
        session.cluster.scale(1)
        view.refresh()
        assert view.workers.value == 4 and "<b>1</b> workers" in view.table.value
    finally:
        view.close()


def test_after_the_stop_button_the_client_says_it_is_closed(comms, session):
    from nbcluster.jupyter.html import client_html

    client = session.client
    view = ClusterWidget(session, poll=False)
    try:
        assert "closed" not in client_html(client)
        view.stop_button.click()
        assert repr(client).endswith(" closed>") and client.closed
        html = client_html(client)
        assert "closed" in html and "Dashboard" not in html     # no link to a dead dashboard
        assert view.workers.value == 0 and view.workers.disabled
    finally:
        view.close()
