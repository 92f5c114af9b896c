"""Large receive buffers: mapped regions reused once nothing refers to them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nbcluster.comm import core
from nbcluster.comm.buffers import POOLED_FROM, GRAIN, ReceivePool
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import Serialized, dumps, loads

pytestmark = pytest.mark.timeout(30)

MB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool():
    p = ReceivePool(max_free_bytes=64 * MB, idle_seconds=10.0, clock=Clock())
    if not p.enabled:
        pytest.skip("no reference counts or private mappings here: every frame gets a bytearray")
    return p


def test_small_frames_get_a_bytearray(pool):
    buf = pool.take(POOLED_FROM - 1)
    assert type(buf) is bytearray and len(buf) == POOLED_FROM - 1
    assert pool.stats()["regions"] == 0


def test_large_frame_gets_writable_memory_of_exactly_its_size(pool):
    size = 5 * MB + 3
    buf = pool.take(size)
    assert len(buf) == size and not buf.readonly
    buf[-3:] = b"end"
    assert bytes(buf[-3:]) == b"end"
    assert pool.stats()["bytes"] == -(-size // GRAIN) * GRAIN   # whole grains


def test_region_is_reused_only_after_every_user_let_go(pool):
    first = pool.take(8 * MB)
    arr = np.frombuffer(first, dtype="u1")      # a value unpickled from the frame holds it too
    del first
    second = pool.take(8 * MB)
    assert pool.stats()["regions"] == 2, "a region still referenced by an array was handed out again"
    arr[:4] = 7
    assert bytes(second[:4]) == bytes(4), "two users share one region"
    del arr, second
    assert pool.stats()["free_bytes"] == 16 * MB
    pool.take(8 * MB)
    assert pool.stats()["regions"] == 2, "a free region of the right size was not reused"


def test_a_much_larger_free_region_is_not_used_for_a_small_frame(pool):
    big = pool.take(40 * MB)
    del big
    small = pool.take(6 * MB)
    assert len(small) == 6 * MB
    assert pool.stats()["regions"] == 2


def test_free_regions_are_unmapped_after_idling(pool):
    held = pool.take(8 * MB)
    pool.take(8 * MB)                           # dropped at once: free
    pool._clock.now += 9.0
    pool.trim()
    assert pool.stats() == {"regions": 2, "bytes": 16 * MB, "free_bytes": 8 * MB}
    pool._clock.now += 2.0
    pool.trim()
    assert pool.stats() == {"regions": 1, "bytes": 8 * MB, "free_bytes": 0}, "the region in use must stay"
    del held
    pool._clock.now += 11.0
    pool.trim()
    assert pool.stats()["regions"] == 0


def test_free_bytes_are_capped_oldest_first(pool):
    views = []
    for _ in range(5):                          # 5 x 20 MB in use at once
        views.append(pool.take(20 * MB))
        pool._clock.now += 1.0
    assert pool.stats()["bytes"] == 100 * MB
    views.clear()                               # all free: 100 MB over the 64 MB cap
    pool.take(POOLED_FROM)                        # any large take releases down to the cap
    stats = pool.stats()
    assert stats["free_bytes"] <= 64 * MB
    assert stats["regions"] == 4                # three 20 MB kept, plus the new 4 MB


def test_a_frame_larger_than_the_cap_is_still_delivered(pool):
    buf = pool.take(80 * MB)                    # cap is 64 MB
    buf[:1] = b"x"
    assert bytes(buf[:1]) == b"x"
    del buf
    held = pool.take(POOLED_FROM)
    assert pool.stats() == {"regions": 1, "bytes": POOLED_FROM, "free_bytes": 0}
    assert len(held) == POOLED_FROM


def test_repeated_large_transfers_over_tcp_carry_the_right_bytes():
    """Reused memory must never show a previous frame: each array arrives whole and exact."""

    async def run():
        got: asyncio.Queue = asyncio.Queue()
        server_side: list = []

        def on_comm(comm):
            server_side.append(comm)
            comm.start(got.put_nowait, lambda reason: None)

        listener = await core.listen("tcp://127.0.0.1:0", on_comm, "tok")
        comm = await core.connect(listener.address, "tok")
        comm.start(lambda batch: None, lambda reason: None)
        try:
            sums = []
            for fill in (1, 2, 3, 4):
                arr = np.full(3 * MB, fill, dtype="u8")          # 24 MB, above POOLED_FROM
                comm.send(m.Data(fill, {"arr": dumps(arr)}, [], {}))
                batch = await asyncio.wait_for(got.get(), 10)
                value = loads(batch[0].values["arr"])
                assert type(batch[0].values["arr"]) is Serialized
                assert value.shape == arr.shape
                sums.append(int(value.sum()))
                del value, batch
            assert sums == [fill * 3 * MB for fill in (1, 2, 3, 4)]
        finally:
            comm.abort("test over")
            listener.stop()

    asyncio.run(run())
