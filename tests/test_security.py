"""Authentication before any unpickle, TLS, and hostile input survived."""

import asyncio
import pickle
import socket
import struct
from operator import add

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nbcluster import Client, LocalCluster
from nbcluster.comm import auth
from nbcluster.comm.seal import Direction, sealed
from nbcluster.errors import AuthenticationError, ConnectError
from nbcluster.protocol.framing import encode, frame_header
from nbcluster.protocol.serialize import Serialized
from nbcluster.security import Security


class CreatesFile:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def raw_frames(batch):
    frames = encode(batch)
    return frame_header(frames) + b"".join(bytes(f) for f in frames)


def hostile_batch(path):
    payload = Serialized(pickle.dumps(CreatesFile(path)), [])
    return raw_frames([["fn", "evil", pickle.dumps(CreatesFile(path))],
                       ["submit", [["evil-1", "evil", payload, None, [], None]]]])


def connect_raw(address):
    host, port = address.split("://")[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def closed_on_us(sock) -> bool:
    """The server closed the connection: an orderly close, or a reset (it closed with our
    unread bytes still queued: a peer that has not proven the token gets no large buffer)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def cluster():
    with LocalCluster(n_workers=1, processes=True) as c:
        yield c


def test_no_token_and_wrong_token_are_refused_before_unpickling(cluster, tmp_path):
    target = tmp_path / "pwned"
    # 1. no handshake at all: frames straight away
    sock = connect_raw(cluster.scheduler_address)
    recv_exactly(sock, auth.SERVER_HELLO)
    sock.sendall(hostile_batch(target))
    assert closed_on_us(sock)
    sock.close()
    # 2. a handshake with the wrong token, then frames
    sock = connect_raw(cluster.scheduler_address)
    hello = recv_exactly(sock, auth.SERVER_HELLO)
    proof, _ = auth.client_proof("not-the-token", hello)
    sock.sendall(proof + hostile_batch(target))
    assert closed_on_us(sock)
    sock.close()
    # the same through the client API: one clear error naming the address
    with pytest.raises(AuthenticationError, match=cluster.scheduler_address):
        Client(cluster.scheduler_address, token="wrong", timeout=5)
    with pytest.raises(AuthenticationError, match=cluster.scheduler_address):
        Client(cluster.scheduler_address, token="", timeout=5)
    # nothing was unpickled anywhere, and the cluster still works
    assert not target.exists()
    with Client(cluster) as client:
        assert client.submit(add, 1, 2).result(timeout=10) == 3
    assert not target.exists()


def test_workers_refuse_unauthenticated_peers(cluster, tmp_path):
    target = tmp_path / "pwned"
    worker = cluster.workers[0]
    sock = connect_raw(worker)
    hello = recv_exactly(sock, auth.SERVER_HELLO)
    proof, _ = auth.client_proof("wrong", hello)
    sock.sendall(proof + raw_frames([["put", 1, {"k": Serialized(pickle.dumps(CreatesFile(target)), [])}]]))
    assert closed_on_us(sock)
    sock.close()
    assert not target.exists()


def test_tls_round_trip_and_plain_tcp_refused():
    security = Security.temporary(require_encryption=True)
    with LocalCluster(n_workers=2, processes=True, security=security) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        assert all(w.startswith("tls://") for w in cluster.workers)
        with Client(cluster) as client:
            import numpy as np

            a, b = cluster.workers
            x = client.submit(np.arange, 1_000_000, workers=[a])
            assert client.submit(np.sum, x, workers=[b]).result(timeout=20) == np.arange(1_000_000).sum()
            assert client.submit(add, 1, 1).result() == 2
        # plain TCP to the TLS port: the TLS handshake fails, nothing gets through
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        with pytest.raises((ConnectError, AuthenticationError)):
            Client(plain, token=cluster.token, timeout=3)
        # a client that requires encryption refuses a tcp:// address outright
        with pytest.raises(ConnectError, match="requires TLS"):
            Client(plain, token=cluster.token, security=security, timeout=3)


async def _send_garbage(address, token, payload, authenticate):
    host, port = address.split("://")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        hello = await asyncio.wait_for(reader.readexactly(auth.SERVER_HELLO), 5)
        if authenticate:      # then batches are sealed, so the fuzz reaches the decoder
            proof, nonce_c = auth.client_proof(token, hello)
            writer.write(proof)
            await asyncio.wait_for(reader.readexactly(auth.SERVER_PROOF), 5)
            up = Direction(auth.session_keys(token, hello[-auth.NONCE:], nonce_c)[0])
            writer.write(sealed(up, encode([["hello", "client", {"id": f"fuzz-{id(payload)}"}]])))
        if isinstance(payload, list):      # frames
            payload = sealed(up, payload) if authenticate else \
                frame_header(payload) + b"".join(payload)
        elif isinstance(payload, int):     # a header announcing a frame of this length
            header = struct.pack("<IQ", 1, payload)
            if authenticate:
                seal = up.batch()
                seal.feed(header)
                header += seal.header_tag()
            payload = header
        writer.write(payload)
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(65536), 0.2)
        except asyncio.TimeoutError:
            pass
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _encode_any(obj):
    """Frames of a batch of anything (or one frame of msgpack)."""
    try:
        return encode(obj) if isinstance(obj, list) else [msgspec.msgpack.encode(obj)]
    except (TypeError, ValueError, OverflowError):
        return [b"\xff" * 8]


frames_strategy = st.one_of(
    st.binary(max_size=200),                                            # random bytes
    st.builds(lambda n: struct.pack("<I", n), st.integers(0, 2**32 - 1)),   # bare frame count
    st.integers(2**40, 2**64 - 1),                                      # huge frame
    st.builds(lambda b: [b], st.binary(max_size=100)),                 # one frame of bytes
    st.builds(_encode_any,
              st.recursive(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=10),
                                     st.sampled_from(["submit", "release", "fn", "req", "want",
                                                      "cancel", "finished", "hello"])),
                           lambda children: st.lists(children, max_size=6), max_leaves=20)),
)


def test_fuzzed_frames_do_not_hurt_the_scheduler(cluster):
    with Client(cluster) as client:
        before = client.submit(add, 20, 22)
        assert before.result(timeout=10) == 42

        @settings(max_examples=100, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(payload=frames_strategy, authenticate=st.booleans())
        def throw(payload, authenticate):
            asyncio.run(_send_garbage(cluster.scheduler_address, cluster.token, payload,
                                      authenticate))

        throw()
        # everyone else is still served, and nothing was lost
        assert before.result() == 42
        assert client.gather(client.map(add, range(50), range(50)), timeout=20) == \
            [2 * i for i in range(50)]
        assert len(client.scheduler_info()["workers"]) == 1
