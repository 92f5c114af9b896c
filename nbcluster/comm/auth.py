"""The handshake every connection opens with: plain bytes, no pickle, no msgpack.

Both sides prove knowledge of the cluster's token with HMAC-SHA256 over a fresh random nonce
from the other side, so a recorded handshake cannot be replayed. Nothing is decoded from a peer
before its proof checks out.

    server -> client   MAGIC + server nonce (32 bytes)
    client -> server   MAGIC + HMAC(token, "client" + server nonce) + client nonce
    server -> client   HMAC(token, "server" + client nonce)

The proofs alone would not bind the connection: a relay that knows no token could forward
them and then speak on the authenticated socket. So each side derives session keys from the
token and both nonces (one key per direction), and every batch after the handshake is sealed
with them (``seal``): a relay can forward the handshake but cannot make or alter a batch.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"NBC2"          # 2: batches after the handshake are sealed
NONCE = 32
DIGEST = 32
SERVER_HELLO = len(MAGIC) + NONCE
CLIENT_PROOF = len(MAGIC) + DIGEST + NONCE
SERVER_PROOF = DIGEST


def new_token() -> str:
    return os.urandom(24).hex()


def _key(token: str | None) -> bytes:
    return (token or "").encode()


def server_hello() -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE)
    return MAGIC + nonce, nonce


def client_proof(token: str | None, hello: bytes) -> tuple[bytes, bytes]:
    """Answer a server hello; returns (bytes to send, client nonce). Raises ValueError."""
    if len(hello) != SERVER_HELLO or not hello.startswith(MAGIC):
        raise ValueError(_greeting(hello, "server"))
    nonce_s = hello[len(MAGIC):]
    nonce_c = os.urandom(NONCE)
    mac = hmac.new(_key(token), b"client" + nonce_s, hashlib.sha256).digest()
    return MAGIC + mac + nonce_c, nonce_c


def check_client_proof(token: str | None, nonce_s: bytes, proof: bytes) -> bytes:
    """Verify a client's proof; returns the server's proof to send. Raises ValueError."""
    if len(proof) != CLIENT_PROOF or not proof.startswith(MAGIC):
        raise ValueError(_greeting(proof, "client"))
    mac = proof[len(MAGIC):len(MAGIC) + DIGEST]
    expected = hmac.new(_key(token), b"client" + nonce_s, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise ValueError("wrong or missing token")
    nonce_c = proof[len(MAGIC) + DIGEST:]
    return hmac.new(_key(token), b"server" + nonce_c, hashlib.sha256).digest()


def check_server_proof(token: str | None, nonce_c: bytes, proof: bytes) -> None:
    expected = hmac.new(_key(token), b"server" + nonce_c, hashlib.sha256).digest()
    if len(proof) != SERVER_PROOF or not hmac.compare_digest(proof, expected):
        raise ValueError("the server does not know this cluster's token")


def _greeting(data: bytes, role: str) -> str:
    if data[:3] == MAGIC[:3]:
        return (f"the peer is an nbcluster {role} of another version (wire {data[:4]!r}, this "
                f"one speaks {MAGIC!r}): run the same nbcluster version everywhere")
    return f"the peer is not an nbcluster {role} (bad greeting)"


def session_keys(token: str | None, nonce_s: bytes, nonce_c: bytes) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key) of one connection: fresh for every
    connection (both nonces), and unknown to anyone without the token."""
    material = nonce_s + nonce_c
    return (hmac.new(_key(token), b"session c2s" + material, hashlib.sha256).digest(),
            hmac.new(_key(token), b"session s2c" + material, hashlib.sha256).digest())
