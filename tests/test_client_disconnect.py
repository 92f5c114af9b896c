"""When the scheduler goes away (killed, frozen, closed), every waiting call raises at once with
an error naming its address, and the client says it is disconnected: nothing hangs."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from nbcluster import Client, LocalCluster, as_completed, wait
from nbcluster.errors import ClusterError, FutureLostError
from test_cli import read_line, start, stop

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


@pytest.fixture
def scheduler(tmp_path):
    """A scheduler process with no workers: what is submitted waits until it goes away."""
    env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               NBCLUSTER_TOKEN="disconnect-test-token")
    proc = start(["scheduler", "--port", "0"], env)
    address = read_line(proc, "nbcluster scheduler at").split()[-1]
    yield proc, address
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
    stop(proc)


def test_killed_scheduler_fails_every_wait_at_once(scheduler):
    proc, address = scheduler
    with Client(address, token="disconnect-test-token") as client:
        futures = client.map(inc, range(3))
        ac = as_completed(futures)
        proc.kill()
        start = time.monotonic()
        with pytest.raises(FutureLostError, match=f"lost the scheduler at {address}"):
            futures[0].result()
        assert time.monotonic() - start < 10
        with pytest.raises(FutureLostError, match=address):
            client.gather(futures)
        assert wait(futures, timeout=5).not_done == set()
        assert {f.key for f in ac} == {f.key for f in futures}
        assert client.status == "disconnected"
        assert "disconnected" in repr(client) and address in repr(client)
        assert "(disconnected: lost the scheduler" in client._repr_html_()
        with pytest.raises(ClusterError, match=f"cannot reach the scheduler: lost the scheduler "
                                                f"at {address}"):
            client.submit(inc, 1)
        with pytest.raises(ClusterError, match=address):
            client.map(inc, [1])
        with pytest.raises(ClusterError, match=address):
            client.scheduler_info()
    assert client.status == "closed" and "closed" in repr(client)
    assert "(closed)" in client._repr_html_() and "Dashboard" not in client._repr_html_()


def test_frozen_scheduler_is_given_up_after_the_heartbeat_timeout(scheduler):
    proc, address = scheduler
    with Client(address, token="disconnect-test-token", heartbeat_timeout="1 s") as client:
        future = client.submit(inc, 1)
        proc.send_signal(signal.SIGSTOP)     # alive to the kernel (TCP answers), silent to us
        start = time.monotonic()
        with pytest.raises(FutureLostError, match=f"{address}: no answer for .* "
                                                  r"\(heartbeat_timeout=1 s\)"):
            future.result()
        assert time.monotonic() - start < 10
        assert client.status == "disconnected"


def test_a_quiet_connection_is_not_mistaken_for_a_lost_one(scheduler):
    proc, address = scheduler
    with Client(address, token="disconnect-test-token", heartbeat_timeout="0.4 s") as client:
        future = client.submit(inc, 1)
        # silent for several timeouts, but the scheduler answers the pings
        with pytest.raises(TimeoutError):
            future.result(timeout=1.5)
        assert client.status == "running" and client.scheduler_info()["workers"] == {}


def test_closed_scheduler_is_said_calmly(caplog):
    with LocalCluster(n_workers=0, processes=False) as cluster:
        client = Client(cluster)
        future = client.submit(inc, 1)
    with caplog.at_level(logging.INFO, logger="nbcluster.client"):
        with pytest.raises(FutureLostError, match="the scheduler at .* closed"):
            future.result(timeout=10)
    assert client.status == "disconnected"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    client.close()
