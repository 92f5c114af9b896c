"""Connections that never prove the token cost the scheduler little and not for long
(issue 13, item 3): a small buffer each, a deadline, and a cap that drops the oldest."""

from __future__ import annotations

import asyncio
import time

import pytest

from nbcluster.comm import auth, connect, tcp

pytestmark = pytest.mark.timeout(30)


async def silent(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that reads the server's hello and never answers it."""
    host, port = address.split("://")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readexactly(auth.SERVER_HELLO)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


def test_a_peer_that_never_proves_the_token_is_dropped_at_the_deadline():
    async def main():
        listener = await tcp.listen("127.0.0.1:0", lambda comm: None, "secret",
                                    handshake_seconds=0.3)
        try:
            start = time.monotonic()
            reader, writer = await silent(listener.address)
            [proto] = listener.pending.waiting
            assert len(proto._buf) <= tcp.HANDSHAKE_BUFFER     # no 256 KiB before the proof
            assert await closed_by_server(reader, 5)
            assert 0.25 < time.monotonic() - start < 4
            assert not listener.pending.waiting
            writer.close()
        finally:
            listener.stop()
    asyncio.run(main())


def test_a_flood_of_silent_sockets_does_not_keep_a_real_client_out():
    async def main():
        listener = await tcp.listen("127.0.0.1:0", lambda comm: None, "secret",
                                    handshake_seconds=30, max_pending=5)
        flood = []
        try:
            for _ in range(20):
                flood.append(await silent(listener.address))
            assert len(listener.pending.waiting) == 5          # the newest five still wait
            comm = await connect(listener.address, "secret", timeout=5)   # and a real one
            assert not comm.closed
            dropped = [await closed_by_server(r, 2) for r, _ in flood[:15]]
            assert all(dropped)
            # the real client, while it proved the token, counted too: one more went
            assert not any([await closed_by_server(r, 0.05) for r, _ in flood[16:]])
            comm.abort("test over")
        finally:
            for _, w in flood:
                w.close()
            listener.stop()
    asyncio.run(main())


def test_an_authenticated_connection_gets_the_full_receive_buffer():
    async def main():
        accepted: asyncio.Queue = asyncio.Queue()
        listener = await tcp.listen("127.0.0.1:0", accepted.put_nowait, "secret")
        try:
            comm = await connect(listener.address, "secret", timeout=5)
            server_side = await asyncio.wait_for(accepted.get(), 5)
            assert len(server_side._protocol._buf) >= tcp.RECEIVE_BUFFER
            assert not listener.pending.waiting
            comm.abort("test over")
            server_side.abort("test over")
        finally:
            listener.stop()
    asyncio.run(main())
