"""Cryptographic building blocks of secure aggregation (pure functions, no protocol state).

* key agreement: X25519 (``cryptography``); every shared secret goes through HKDF-SHA256 with a
  purpose label and the round nonce, so one agreement never yields the same key twice;
* authenticated encryption of Shamir shares between two sites: AES-256-GCM;
* mask generation: AES-256-CTR keystream (a cryptographic PRG; numpy's PCG/Philox are not)
  read as little-endian uint32, so a mask is exactly as wide as a quantized value;
* message authentication of a masked vector to the server: HMAC-SHA256;
* Shamir secret sharing of 32-byte secrets over GF(2^521 - 1) (a Mersenne prime > 2^256).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_BYTES = 32
PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
GCM_NONCE = 12


class SecAggError(ValueError):
    """A secure-aggregation message or state is invalid (bad length, failed authentication...)."""


# ---- key agreement ---------------------------------------------------------------------------


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes ``(private, public)``."""
    sk = X25519PrivateKey.generate()
    return private_bytes(sk), sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key (to check a reconstructed key)."""
    sk = X25519PrivateKey.from_private_bytes(_key(private, "private key"))
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key(b: bytes, what: str) -> bytes:
    if not isinstance(b, bytes) or len(b) != KEY_BYTES:
        raise SecAggError(f"{what} must be {KEY_BYTES} bytes")
    return b


def agree(private: bytes, peer_public: bytes, purpose: str, nonce: bytes) -> bytes:
    """A 32-byte key shared by the two owners of ``private`` / ``peer_public`` for ``purpose``
    in the round ``nonce`` (X25519 then HKDF-SHA256)."""
    sk = X25519PrivateKey.from_private_bytes(_key(private, "private key"))
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(_key(peer_public, "public key")))
    except ValueError as e:  # an all-zero (low-order) public key
        raise SecAggError(f"key agreement failed: {e}") from e
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=nonce, info=purpose.encode()
    ).derive(shared)


# ---- authenticated encryption, MAC, PRG --------------------------------------------------------


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(GCM_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if not isinstance(ciphertext, bytes) or len(ciphertext) < GCM_NONCE + 16:
        raise SecAggError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:GCM_NONCE], ciphertext[GCM_NONCE:], aad)
    except InvalidTag as e:
        raise SecAggError("ciphertext failed authentication (tampered or wrong key)") from e


def mac(key: bytes, *parts: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over length-prefixed parts (a memoryview of a vector: no copy)."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(memoryview(p).nbytes.to_bytes(8, "little"))
        h.update(p)
    return h.digest()


def mac_ok(key: bytes, tag: bytes, *parts: bytes | memoryview) -> bool:
    return isinstance(tag, bytes) and hmac.compare_digest(mac(key, *parts), tag)


def commit(secret: bytes, nonce: bytes) -> bytes:
    """A hiding, binding commitment to a 256-bit random secret (lets the server check a
    reconstruction)."""
    return hashlib.sha256(b"fedray-secagg-commit" + nonce + secret).digest()


def prg_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint32 words of AES-256-CTR keystream under ``seed`` (the mask)."""
    enc = Cipher(algorithms.AES(_key(seed, "mask seed")), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(4 * length)) + enc.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


# ---- Shamir secret sharing ---------------------------------------------------------------------


def share_secret(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` (32 bytes) at the points ``xs``; any ``threshold`` of them rebuild it."""
    if threshold < 1 or threshold > len(xs):
        raise SecAggError(f"threshold {threshold} needs 1..{len(xs)} share holders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share points must be distinct and non-zero")
    s = int.from_bytes(_key(secret, "secret"), "little")
    coeffs = [s] + [
        int.from_bytes(os.urandom(SHARE_BYTES), "little") % PRIME for _ in range(threshold - 1)
    ]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "little")
    return out


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` (or more; the first ``threshold`` are used) shares."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} share(s) < threshold {threshold}")
    pts = []
    for x, b in list(shares.items())[:threshold]:
        if not isinstance(b, bytes) or len(b) != SHARE_BYTES:
            raise SecAggError(f"share from point {x} must be {SHARE_BYTES} bytes")
        y = int.from_bytes(b, "little")
        if not 0 < x < PRIME or y >= PRIME:
            raise SecAggError(f"share from point {x} is out of the field")
        pts.append((x, y))
    s = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        s = (s + yi * num * pow(den, -1, PRIME)) % PRIME
    if s >= 2 ** (8 * KEY_BYTES):
        raise SecAggError("reconstructed secret is out of range (inconsistent shares)")
    return s.to_bytes(KEY_BYTES, "little")
