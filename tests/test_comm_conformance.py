"""Every transport behind ``nbcluster.comm`` passes the same tests (tcp, tls, inproc).

A pair of connected comms is made through the public interface only (``listen``, ``connect``,
``Comm.start/send/send_many/close/abort``); each test makes the same assertions for every
transport. Waits are on events (a queue of batches, an event per close), never on sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest

from nbcluster.comm import Comm, connect, listen
from nbcluster.errors import AuthenticationError, ConnectError
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import Serialized, dumps, loads

pytestmark = pytest.mark.timeout(30)

TRANSPORTS = ["tcp", "tls", "inproc"]
WAIT = 10.0          # seconds any one event may take
MB = 2**20


@pytest.fixture(scope="module")
def security():
    from nbcluster.security import Security

    return Security.temporary()


@pytest.fixture(params=TRANSPORTS)
def transport(request, security):
    """(listen address, security) of one transport."""
    return {"tcp": ("tcp://127.0.0.1:0", None), "tls": ("tls://127.0.0.1:0", security),
            "inproc": ("inproc://", None)}[request.param]


def note(*fields) -> m.Message:
    """A message carrying ``fields`` (any msgpack values and Serialized ones): what the
    transport carries is not its concern, so one record type serves every test."""
    return m.Data(0, {"f": list(fields)}, [], {})


def fields(msg: m.Message) -> list:
    assert type(msg) is m.Data
    return msg.values["f"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * WAIT))


class End:
    """One side of a connection, recording what it receives and how it closes."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.batches: asyncio.Queue = asyncio.Queue()
        self.closes: list[str] = []
        self.closed = asyncio.Event()

    def start(self) -> None:
        self.comm.start(self.batches.put_nowait, self._on_close)

    def _on_close(self, reason: str) -> None:
        self.closes.append(reason)
        self.closed.set()

    async def batch(self) -> list:
        """The fields of each message of the next batch."""
        return [fields(msg) for msg in await asyncio.wait_for(self.batches.get(), WAIT)]

    async def messages(self, n: int) -> list:
        """The next ``n`` messages, over however many batches they came in."""
        out: list = []
        while len(out) < n:
            out += await self.batch()
        return out

    async def wait_closed(self) -> str:
        await asyncio.wait_for(self.closed.wait(), WAIT)
        return self.closes[0]


class Pair:
    def __init__(self, listener, client: End, server: End) -> None:
        self.listener, self.client, self.server = listener, client, server

    def ends(self, side: str) -> tuple[End, End]:
        """(this side, the other side)."""
        return (self.client, self.server) if side == "client" else (self.server, self.client)

    def stop(self) -> None:
        self.client.comm.abort("test over")
        self.server.comm.abort("test over")
        self.listener.stop()


async def make_pair(transport, token="secret", start_server=True) -> Pair:
    address, security = transport
    accepted: asyncio.Queue = asyncio.Queue()

    def on_comm(comm):
        end = End(comm)
        if start_server:
            end.start()
        accepted.put_nowait(end)

    listener = await listen(address, on_comm, token, security)
    client = End(await connect(listener.address, token, security=security))
    client.start()
    server = await asyncio.wait_for(accepted.get(), WAIT)
    return Pair(listener, client, server)


async def settle() -> None:
    """Let the event loop run what is already due (closing callbacks, say). Used only before
    asserting that something did NOT happen (no second close, no batch delivered): there is
    no event to wait for, so the loop is given a bounded number of turns instead."""
    for _ in range(20):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- connecting
def test_listen_gives_an_address_of_its_scheme_and_connect_reaches_it(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            scheme = transport[0].split("://")[0]
            assert pair.listener.address.startswith(f"{scheme}://")
            assert pair.listener.address != transport[0]         # a name or port was chosen
            for end in (pair.client, pair.server):
                assert isinstance(end.comm.local_address, str) and end.comm.local_address
                assert isinstance(end.comm.peer_address, str) and end.comm.peer_address
                assert not end.comm.closed
            assert pair.client.comm.peer_address.split("://")[0] == scheme
        finally:
            pair.stop()
    run(main())


def test_messages_travel_both_ways_in_order(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            for i in range(50):                                  # one tick each
                pair.client.comm.send(note("ping", i))
                await asyncio.sleep(0)
            assert await pair.server.messages(50) == [["ping", i] for i in range(50)]
            pair.server.comm.send(note("pong", {"a": [1, 2.5, None, True, "x", b"raw"]}))
            assert await pair.client.batch() == [["pong", {"a": [1, 2.5, None, True, "x",
                                                                 b"raw"]}]]
        finally:
            pair.stop()
    run(main())


def test_what_is_queued_in_one_tick_leaves_as_one_batch(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            comm = pair.client.comm
            comm.send(note("a", 1))
            comm.send_many([note("b", 2), note("c", 3)])
            comm.send_many([])                                   # nothing, and no empty batch
            comm.send(note("d", 4))
            assert await pair.server.batch() == [["a", 1], ["b", 2], ["c", 3], ["d", 4]]
            comm.send_many([note("e", 5)])
            assert await pair.server.batch() == [["e", 5]]
            assert pair.server.batches.empty()
        finally:
            pair.stop()
    run(main())


def test_batches_that_arrive_before_start_are_delivered_by_it(transport):
    async def main():
        pair = await make_pair(transport, start_server=False)
        try:
            pair.client.comm.send(note("early", 1))
            await asyncio.sleep(0)
            pair.client.comm.send(note("early", 2))
            pair.client.comm.send(note("ping"))
            await asyncio.sleep(0)
            # the server has not started its comm: make sure the batches are there, then start
            probe = await make_pair(transport)        # a round trip on another connection
            probe.client.comm.send(note("probe"))
            await probe.server.batch()
            probe.stop()
            pair.server.start()
            assert await pair.server.messages(3) == [["early", 1], ["early", 2], ["ping"]]
        finally:
            pair.stop()
    run(main())


def test_the_two_ends_may_live_on_different_event_loops(transport):
    """As a client's I/O thread and an in-process cluster's thread do."""
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, name="nbcluster-test-loop")
    thread.start()

    def there(coro):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, other))

    async def main():
        address, security = transport
        accepted: asyncio.Queue = asyncio.Queue()
        mine = asyncio.get_running_loop()

        def on_comm(comm):                                  # on the other loop
            end = End(comm)
            end.start()
            mine.call_soon_threadsafe(accepted.put_nowait, end)

        async def start_listener():
            return await listen(address, on_comm, "secret", security)

        listener = await there(start_listener())
        client = End(await connect(listener.address, "secret", security=security))
        client.start()
        server = await asyncio.wait_for(accepted.get(), WAIT)
        try:
            client.comm.send(note("hello", 1))
            assert await there(server.batch()) == [["hello", 1]]

            async def reply():
                server.comm.send(note("back", 2))
            await there(reply())
            assert await client.batch() == [["back", 2]]
            client.comm.close()
            assert await there(server.wait_closed())
            assert await client.wait_closed()
        finally:
            client.comm.abort("test over")

            async def stop():
                server.comm.abort("test over")
                listener.stop()
            await there(stop())

    try:
        run(main())
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(WAIT)
        other.close()


# ---------------------------------------------------------------------- payloads
def test_large_control_frames_and_large_buffers_arrive_whole(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            blob = bytes(range(256)) * (12 * MB // 256)           # 12 MB inside the control frame
            arr = np.arange(5 * MB, dtype="u8")                   # 40 MB as a buffer of its own
            pair.client.comm.send(note("blob", blob, dumps(arr)))
            pair.client.comm.send(note("after", 1))
            [first, after] = await pair.server.messages(2)
            assert first[0] == "blob" and bytes(first[1]) == blob
            assert type(first[2]) is Serialized
            got = loads(first[2])
            assert got.dtype == arr.dtype and np.array_equal(got, arr)
            assert after == ["after", 1]
            # and back the other way, forwarding what arrived without unpickling it
            pair.server.comm.send(note("echo", first[2]))
            [[op, ser]] = await pair.client.batch()
            assert op == "echo" and np.array_equal(loads(ser), arr)
        finally:
            pair.stop()
    run(main())


def test_serialized_values_keep_their_out_of_band_buffers(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            a, b = np.ones(1000), np.arange(100_000, dtype="i4")
            parts = dumps({"a": a, "b": b, "text": "x" * 100})
            assert len(parts.buffers) == 2
            small = dumps((1, "two"))
            pair.client.comm.send(note("values", parts, [small, None], {"k": dumps(b)}))
            [[op, got, [got_small, none], mapping]] = await pair.server.batch()
            assert op == "values" and none is None
            assert type(got) is Serialized and len(got.buffers) == 2
            value = loads(got)
            assert np.array_equal(value["a"], a) and np.array_equal(value["b"], b)
            assert value["text"] == "x" * 100
            assert loads(got_small) == (1, "two")
            assert np.array_equal(loads(mapping["k"]), b)
            assert got.nbytes == parts.nbytes
        finally:
            pair.stop()
    run(main())


# ---------------------------------------------------------------------- closing
@pytest.mark.parametrize("side", ["client", "server"])
def test_close_flushes_then_both_sides_hear_once_with_a_reason(transport, side):
    async def main():
        pair = await make_pair(transport)
        try:
            mine, theirs = pair.ends(side)
            mine.comm.send(note("last words"))
            mine.comm.close()                                    # what is queued still goes
            assert mine.comm.closed
            assert await theirs.messages(1) == [["last words"]]
            assert isinstance(await theirs.wait_closed(), str) and theirs.closes[0]
            assert await mine.wait_closed()
            mine.comm.close()
            mine.comm.abort("again")
            await settle()
            assert len(mine.closes) == 1 and len(theirs.closes) == 1
            assert theirs.comm.closed
            mine.comm.send(note("into the void"))              # ignored, not an error
            mine.comm.send_many([note("nor this")])
            theirs.comm.send(note("nor that"))
            await settle()
            assert mine.batches.empty()
        finally:
            pair.stop()
    run(main())


@pytest.mark.parametrize("side", ["client", "server"])
def test_close_right_after_a_large_send_still_delivers_it_whole(transport, side):
    async def main():
        pair = await make_pair(transport)
        try:
            mine, theirs = pair.ends(side)
            arr = np.arange(6 * MB, dtype="u8")                  # 48 MB: more than any buffer
            mine.comm.send(note("big", dumps(arr)))
            mine.comm.send(note("small", 1))
            mine.comm.close()
            [[op, ser], small] = await theirs.messages(2)
            assert op == "big" and np.array_equal(loads(ser), arr)
            assert small == ["small", 1]
            await theirs.wait_closed()
        finally:
            pair.stop()
    run(main())


@pytest.mark.parametrize("side", ["client", "server"])
def test_abort_closes_at_once_with_the_reason_given(transport, side):
    async def main():
        pair = await make_pair(transport)
        try:
            mine, theirs = pair.ends(side)
            mine.comm.abort("giving up")
            assert mine.comm.closed and mine.closes == ["giving up"]
            assert mine.comm.close_reason == "giving up"
            await theirs.wait_closed()
            await settle()
            assert len(mine.closes) == 1 and len(theirs.closes) == 1
        finally:
            pair.stop()
    run(main())


def test_start_after_the_peer_closed_calls_on_close_once(transport):
    async def main():
        pair = await make_pair(transport, start_server=False)
        try:
            gone = asyncio.Event()
            pair.server.comm.on_close = lambda reason: gone.set()   # before start: to wait on
            pair.client.comm.abort("before the server started")
            await asyncio.wait_for(gone.wait(), WAIT)
            assert pair.server.comm.closed
            pair.server.start()                                      # already closed: told so
            assert len(pair.server.closes) == 1 and pair.server.closes[0]
            await settle()
            assert len(pair.server.closes) == 1
        finally:
            pair.stop()
    run(main())


def test_a_protocol_error_in_a_handler_aborts_the_connection(transport):
    from nbcluster.errors import ProtocolError

    async def main():
        pair = await make_pair(transport, start_server=False)
        try:
            def refuse(batch):
                raise ProtocolError("not for me")

            pair.server.comm.start(refuse, pair.server._on_close)
            pair.client.comm.send(note("bad"))
            reason = await pair.server.wait_closed()
            assert "not for me" in reason
            await pair.client.wait_closed()
        finally:
            pair.stop()
    run(main())


def test_a_message_that_cannot_be_encoded_aborts_naming_why(transport):
    async def main():
        pair = await make_pair(transport)
        try:
            pair.client.comm.send(note("fine", 1))
            pair.client.comm.send(note("not msgpack", object()))
            reason = await pair.client.wait_closed()
            assert "cannot encode" in reason and "object" in reason
            await pair.server.wait_closed()
            await settle()
            assert len(pair.client.closes) == 1 and len(pair.server.closes) == 1
            assert pair.server.batches.empty()             # the batch was not half sent
        finally:
            pair.stop()
    run(main())


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_batch_the_receiver_cannot_decode_closes_the_connection_naming_why(transport, size):
    """Decoding checks each field's type: a message the sender could encode but whose field
    is of the wrong type is refused by the receiver (also when a large buffer ends it)."""
    async def main():
        pair = await make_pair(transport)
        try:
            payload = dumps(np.zeros(4 * MB if size == "large" else 10, dtype="u8"))
            pair.client.comm.send(m.Data("not an id", {"x": payload}, [], {}))  # type: ignore
            reason = await pair.server.wait_closed()
            assert "'data': bad request_id" in reason
            await pair.client.wait_closed()
            assert pair.server.batches.empty()
        finally:
            pair.stop()
    run(main())


# ---------------------------------------------------------------------- failing to connect
def _missing_address(transport) -> str:
    scheme = transport[0].split("://")[0]
    if scheme == "inproc":
        return "inproc://nobody-listens-here"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"


def test_connecting_to_a_missing_address_fails_fast_and_names_it(transport):
    address = _missing_address(transport)

    async def main():
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await connect(address, "secret", timeout=5, security=transport[1])
        assert time.monotonic() - started < 2
        assert address in str(info.value) and not isinstance(info.value, AuthenticationError)
    run(main())


@pytest.mark.parametrize("port", ["9" * 5000, "65536", "99999", "-1", "8x", "\u0661"])
def test_an_address_whose_port_is_not_a_port_is_refused_naming_it(port):
    async def main():      # tcp only: tls parses the same way, once it has certificates
        with pytest.raises(ConnectError, match="expected tcp://HOST:PORT") as info:
            await connect(f"tcp://127.0.0.1:{port}", "secret", timeout=5)
        assert len(str(info.value)) < 200
    run(main())


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong", "missing"])
def test_a_wrong_token_fails_authentication_and_nothing_is_delivered(transport, token):
    async def main():
        address, security = transport
        accepted: list = []

        def on_comm(comm):
            accepted.append(comm)
            comm.start(lambda batch: pytest.fail(f"delivered {batch}"), lambda reason: None)

        listener = await listen(address, on_comm, "secret", security)
        try:
            with pytest.raises(AuthenticationError) as info:
                await connect(listener.address, token, timeout=5, security=security)
            assert listener.address in str(info.value)
            assert "token" in str(info.value)
            await settle()
            assert accepted == []                    # the server never saw a connection
        finally:
            listener.stop()
    run(main())
