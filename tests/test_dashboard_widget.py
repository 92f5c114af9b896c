"""The inline dashboard: a BokehModel widget fed by the client, with no port of its own."""

from __future__ import annotations

import json
import queue
import time

import pytest

pytest.importorskip("jupyter_bokeh")
from nbcluster import Client, LocalCluster  # noqa: E402
from nbcluster.dashboard.widget import DashboardWidget, dashboard_widget  # noqa: E402
from nbcluster.state.snapshot import snapshot  # noqa: E402
from nbcluster.testing import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(40)


def inc(x):
    return x + 1


def serve_snapshots(scheduler) -> None:
    """The ``snapshot`` request, until the scheduler answers it itself."""
    if not hasattr(type(scheduler), "_request_snapshot"):
        scheduler._request_snapshot = lambda peer, request_id, since=0, transfers_since=0: \
            snapshot(scheduler.state, since, transfers_since)


def front_end_drew(w) -> None:
    """What the view does once it has drawn the plots: the layout's tags come back changed."""
    layout = w._model
    w._sync_model(w, {"event": "jsevent", "kind": "ModelChanged", "model": {"id": layout.id},
                      "attr": "tags", "new": [*layout.tags, "drawn"]}, [])


def test_widget_updates_its_plots_over_its_comm(client):
    w = dashboard_widget(client, interval=0.25, wait_for_view=30)
    sent = []
    w.send = lambda content, buffers=None: sent.append(content)   # what goes to the browser
    try:
        assert isinstance(w, DashboardWidget)
        bundle = w.render_bundle
        assert bundle["docs_json"] and bundle["render_items"]       # rendered by jupyter_bokeh
        stream, memory = w.components
        client.gather(client.map(inc, range(40)))
        assert w.updates == 0 and not sent       # nothing before the view exists
        front_end_drew(w)
        wait_until(lambda: len(stream.source.data["key"]) == 40, "40 tasks in the stream")
        wait_until(lambda: len(memory.source.data["worker"]) == 2, "two workers' memory")
        assert sorted(memory.source.data["address"]) == sorted(client.cluster.workers)
        payloads = [m["payload"] for m in sent if m.get("msg") == "patch"]
        # each patch: three identical messages, each with header and content (see the class)
        assert payloads and payloads[0::3] == payloads[1::3] == payloads[2::3]
        patches = [json.loads(p) for p in payloads[0::3]]
        assert all(p["msgtype"] == "PATCH-DOC" and p["events"] for p in patches)
        assert any("inc-" in p for p in payloads[2::3])                    # task keys went out
        assert w.running
        # a view that appears later (the page was reloaded) is given the whole state
        assert w.resyncs == 0
        w._bundle_time -= 10
        front_end_drew(w)
        assert w.resyncs == 1 and "inc-" in json.dumps(w.render_bundle)
    finally:
        w.close()
    assert not w.running


def test_widget_stops_when_the_client_closes():
    with LocalCluster(n_workers=1, processes=False) as cluster:
        serve_snapshots(cluster.scheduler)
        c = Client(cluster)
        w = dashboard_widget(c, plots=("progress", "workers"), interval=0.25, wait_for_view=0)
        wait_until(lambda: w.updates >= 1, "the widget's first update")
        assert w.components[1].source.data["threads"] == [1]
        c.close()
        wait_until(lambda: not w.running, "the widget to stop")
        w.close()


def test_unknown_plot_is_refused(client):
    with pytest.raises(ValueError, match="unknown plots"):
        dashboard_widget(client, plots=("nope",))


# --------------------------------------------------------------------------- a real kernel
CELLS = [
    """
from nbcluster import Client, LocalCluster
from nbcluster.dashboard.widget import dashboard_widget
from nbcluster.state.snapshot import snapshot
cluster = LocalCluster(n_workers=2, processes=False)
s = cluster.scheduler
if not hasattr(type(s), "_request_snapshot"):
    s._request_snapshot = lambda peer, rid, since=0, transfers_since=0: snapshot(s.state, since, transfers_since)
client = Client(cluster)
w = dashboard_widget(client, interval=0.25, wait_for_view=0.5)
w
""",
    """
import time
def inc(x):
    time.sleep(0.01)
    return x + 1
futures = client.map(inc, range(200))
time.sleep(1.5)            # a cell that blocks: the plots keep updating meanwhile
""",
    "len(w.components[0].source.data['key'])",
    "w.close(); client.close(); cluster.close()",
]


def test_patches_reach_the_front_end_while_a_cell_blocks():
    jupyter_client = pytest.importorskip("jupyter_client.manager")
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        per_cell = []
        for code in CELLS:
            msg_id = kc.execute(code)
            msgs = []
            deadline = time.monotonic() + 30
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    assert time.monotonic() < deadline, f"cell did not finish: {code}"
                    continue
                msgs.append(msg)
                if (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id
                        and msg["content"]["execution_state"] == "idle"):
                    break
            errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
            assert not errors, "\n".join("\n".join(e["traceback"]) for e in errors)
            per_cell.append(msgs)
        opened = [m for m in per_cell[0] if m["msg_type"] == "comm_open"]
        assert any(m["content"]["data"]["state"].get("_model_name") == "BokehModel"
                   for m in opened)
        display = [m for m in per_cell[0] if m["msg_type"] == "execute_result"]
        assert "application/vnd.jupyter.widget-view+json" in display[0]["content"]["data"]
        patches = [m["content"]["data"]["content"] for m in per_cell[1]
                   if m["msg_type"] == "comm_msg"
                   and m["content"]["data"].get("content", {}).get("msg") == "patch"]
        updates = {p["payload"] for p in patches if "PATCH-DOC" in p.get("payload", "")}
        assert len(updates) >= 2, "the widget did not update while the cell was blocking"
        assert any("inc-" in p.get("payload", "") for p in patches)   # tasks went out
        result = [m for m in per_cell[2] if m["msg_type"] == "execute_result"]
        assert int(result[0]["content"]["data"]["text/plain"]) > 0
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
