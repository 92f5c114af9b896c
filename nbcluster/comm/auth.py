"""The handshake every connection opens with: plain bytes, no pickle, no msgpack.

Both sides prove knowledge of the cluster's token with HMAC-SHA256 over a fresh random nonce
from the other side, so a recorded handshake cannot be replayed. Nothing is decoded from a peer
before its proof checks out.

    server -> client   MAGIC + server nonce (32 bytes)
    client -> server   MAGIC + HMAC(token, "client" + server nonce) + client nonce
    server -> client   HMAC(token, "server" + client nonce)
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"NBC1"
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
        raise ValueError("the peer is not an nbcluster server (bad greeting)")
    nonce_s = hello[len(MAGIC):]
    nonce_c = os.urandom(NONCE)
    mac = hmac.new(_key(token), b"client" + nonce_s, hashlib.sha256).digest()
    return MAGIC + mac + nonce_c, nonce_c


def check_client_proof(token: str | None, nonce_s: bytes, proof: bytes) -> bytes:
    """Verify a client's proof; returns the server's proof to send. Raises ValueError."""
    if len(proof) != CLIENT_PROOF or not proof.startswith(MAGIC):
        raise ValueError("not an nbcluster client (bad greeting)")
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
