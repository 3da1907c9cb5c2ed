"""SecAgg+: the round parameters and message decoding shared by the two state machines,
:class:`~orchestrator.secagg.server.ServerRound` and :class:`~orchestrator.secagg.site.SiteRound`
(no Flower here).

One round, four exchanges (Bonawitz et al. 2017, with Bell et al. 2020's neighbour graph):

0. **advertise**: the server sends the round's parameters (:class:`RoundParams`) and its MAC
   public key; each site replies with two X25519 public keys (``c``: encryption, ``s``: masks).
1. **share keys**: the server sends each site its neighbours' public keys; the site draws a
   self-mask seed ``b``, Shamir-shares ``b`` and its ``s`` private key among its neighbours and
   itself (threshold ``t``), encrypts each neighbour's shares (AES-GCM under the pairwise ``c``
   agreement) and replies with the ciphertexts and a commitment to ``b``.
2. **masked input**: the server routes the ciphertexts; the site replies with
   ``y = q + PRG(b) + sum_v +-PRG(s_uv) mod 2^32`` (``q``: its quantized update; ``s_uv``: the
   pairwise agreement with each neighbour that shared) and an HMAC of ``y`` for the server.
3. **unmask**: the server names survivors and dropped sites; each site returns, per neighbour,
   the share of ``b`` (survivor) or of the ``s`` private key (dropped), never both.

The server removes every mask and learns only the sum of the survivors' ``q``. Dropouts after
step 1 are recovered as long as ``t`` shares come back; otherwise :class:`RoundAborted` (skip
the round). Every decoder bounds and checks what it receives (:class:`SecAggError`).

Messages are flat dicts of ints, floats, bytes and lists of them (they fit a Flower
``ConfigRecord``); the masked vector travels as a uint32 array next to its dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.secagg import primitives as P
from orchestrator.secagg.graph import neighbours
from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.quantize import levels

NONCE_BYTES = 16
MAX_SITES = 100_000
MAX_LENGTH = 2**31  # coordinates of one update

ENC, MASK, MAC = "fedray-secagg-enc", "fedray-secagg-mask", "fedray-secagg-mac"
Payload = dict[str, Any]


class RoundAborted(SecAggError):
    """Too few sites are left for the threshold: the round is skipped, the model unchanged."""


# ---- decoding helpers (every received field goes through one of these) ----------------------


def req_field(p: Mapping[str, Any], key: str) -> Any:
    if not isinstance(p, Mapping) or key not in p:
        raise SecAggError(f"message lacks {key!r}")
    return p[key]


def req_int(p: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = req_field(p, key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SecAggError(f"{key!r} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def req_bytes(p: Mapping[str, Any], key: str, size: int) -> bytes:
    v = req_field(p, key)
    if not isinstance(v, bytes) or len(v) != size:
        raise SecAggError(f"{key!r} must be {size} bytes")
    return v


def req_ids(p: Mapping[str, Any], key: str, n: int) -> list[int]:
    v = req_field(p, key)
    if not isinstance(v, list) or len(v) > n:
        raise SecAggError(f"{key!r} must be a list of at most {n} site ids")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= n for i in v):
        raise SecAggError(f"{key!r} holds a site id outside 1..{n}")
    if len(set(v)) != len(v):
        raise SecAggError(f"{key!r} repeats a site id")
    return list(v)


def req_blobs(p: Mapping[str, Any], key: str, count: int, max_size: int) -> list[bytes]:
    v = req_field(p, key)
    if not isinstance(v, list) or len(v) != count:
        raise SecAggError(f"{key!r} must be a list of {count} byte strings")
    if any(not isinstance(b, bytes) or len(b) > max_size for b in v):
        raise SecAggError(f"{key!r} holds something other than bytes of <= {max_size}")
    return list(v)


# ---- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundParams:
    """What every site of a round must agree on."""

    nonce: bytes
    num_sites: int
    threshold: int
    degree: int
    clip_range: float
    length: int

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_BYTES:
            raise SecAggError(f"nonce must be {NONCE_BYTES} bytes")
        if not 2 <= self.num_sites <= MAX_SITES:
            raise SecAggError(
                f"secure aggregation needs 2..{MAX_SITES} sites, got {self.num_sites}"
            )
        if not self.degree >= 1:
            raise SecAggError(f"neighbour degree must be >= 1, got {self.degree}")
        group = min(self.degree, self.num_sites - 1) + 1  # a site's share holders
        if not group // 2 + 1 <= self.threshold <= group:
            raise SecAggError(
                f"threshold {self.threshold} must be in [{group // 2 + 1}, {group}] for "
                f"{self.num_sites} sites with {group - 1} neighbours each (a majority of a "
                "site's share holders, so no minority can rebuild both of its secrets)"
            )
        if not (self.clip_range > 0 and np.isfinite(self.clip_range)):
            raise SecAggError(f"clip range must be a positive number, got {self.clip_range}")
        if not 1 <= self.length <= MAX_LENGTH:
            raise SecAggError(f"vector length must be in 1..{MAX_LENGTH}, got {self.length}")

    @property
    def levels(self) -> int:
        return levels(self.num_sites)

    def graph(self) -> dict[int, frozenset[int]]:
        return neighbours(self.num_sites, self.degree, self.nonce)

    def encode(self) -> Payload:
        return {
            "nonce": self.nonce,
            "n": self.num_sites,
            "t": self.threshold,
            "k": self.degree,
            "r": float(self.clip_range),
            "d": self.length,
        }

    @classmethod
    def decode(cls, p: Mapping[str, Any]) -> RoundParams:
        r = req_field(p, "r")
        if not isinstance(r, float):
            raise SecAggError("'r' must be a float")
        return cls(
            nonce=req_bytes(p, "nonce", NONCE_BYTES),
            num_sites=req_int(p, "n", 2, MAX_SITES),
            threshold=req_int(p, "t", 1, MAX_SITES),
            degree=req_int(p, "k", 1, MAX_SITES),
            clip_range=r,
            length=req_int(p, "d", 1, MAX_LENGTH),
        )


def sid_bytes(*sids: int) -> bytes:
    return b"".join(s.to_bytes(4, "little") for s in sids)


def pair_sign(me: int, other: int) -> int:
    """+1: ``me`` adds the pairwise mask, -1: it subtracts it (the peer does the opposite)."""
    return 1 if me < other else -1


CT_BYTES = P.GCM_NONCE + 8 + 2 * P.SHARE_BYTES + 16  # nonce + (u, v, two shares) + GCM tag


def new_params(
    num_sites: int,
    threshold: int | None,
    degree: int | None,
    clip_range: float,
    length: int,
) -> RoundParams:
    """Round parameters with a fresh nonce; ``None`` threshold = two thirds of a site's share
    holders (rounded up; Bonawitz et al.'s choice), ``None`` degree = all pairs."""
    k = num_sites - 1 if degree is None else min(degree, num_sites - 1)
    t = threshold if threshold is not None else max(-(-2 * (k + 1) // 3), (k + 1) // 2 + 1)
    return RoundParams(os.urandom(NONCE_BYTES), num_sites, t, k, clip_range, length)


def site_ids(nodes: Sequence[int]) -> dict[int, int]:
    """Flower node id -> protocol site id (1..n; Shamir points must be distinct and non-zero)."""
    return {node: i + 1 for i, node in enumerate(sorted(nodes))}
