"""SecAgg+ as two state machines: :class:`ServerRound` and :class:`SiteRound` (no Flower here).

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.secagg import primitives as P
from orchestrator.secagg.graph import neighbours
from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.quantize import dequantize_sum, levels

NONCE_BYTES = 16
MAX_SITES = 100_000
MAX_LENGTH = 2**31  # coordinates of one update

ENC, MASK, MAC = "fedray-secagg-enc", "fedray-secagg-mask", "fedray-secagg-mac"
Payload = dict[str, Any]


class RoundAborted(SecAggError):
    """Too few sites are left for the threshold: the round is skipped, the model unchanged."""


# ---- decoding helpers (every received field goes through one of these) ----------------------


def _field(p: Mapping[str, Any], key: str) -> Any:
    if not isinstance(p, Mapping) or key not in p:
        raise SecAggError(f"message lacks {key!r}")
    return p[key]


def _int(p: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = _field(p, key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SecAggError(f"{key!r} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _bytes(p: Mapping[str, Any], key: str, size: int) -> bytes:
    v = _field(p, key)
    if not isinstance(v, bytes) or len(v) != size:
        raise SecAggError(f"{key!r} must be {size} bytes")
    return v


def _ints(p: Mapping[str, Any], key: str, n: int) -> list[int]:
    v = _field(p, key)
    if not isinstance(v, list) or len(v) > n:
        raise SecAggError(f"{key!r} must be a list of at most {n} site ids")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= n for i in v):
        raise SecAggError(f"{key!r} holds a site id outside 1..{n}")
    if len(set(v)) != len(v):
        raise SecAggError(f"{key!r} repeats a site id")
    return list(v)


def _blobs(p: Mapping[str, Any], key: str, count: int, max_size: int) -> list[bytes]:
    v = _field(p, key)
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
        r = _field(p, "r")
        if not isinstance(r, float):
            raise SecAggError("'r' must be a float")
        return cls(
            nonce=_bytes(p, "nonce", NONCE_BYTES),
            num_sites=_int(p, "n", 2, MAX_SITES),
            threshold=_int(p, "t", 1, MAX_SITES),
            degree=_int(p, "k", 1, MAX_SITES),
            clip_range=r,
            length=_int(p, "d", 1, MAX_LENGTH),
        )


def _sid_bytes(*sids: int) -> bytes:
    return b"".join(s.to_bytes(4, "little") for s in sids)


def pair_sign(me: int, other: int) -> int:
    """+1: ``me`` adds the pairwise mask, -1: it subtracts it (the peer does the opposite)."""
    return 1 if me < other else -1


# ---- the site --------------------------------------------------------------------------------


@dataclass
class SiteRound:
    """One site's secrets for one round; :meth:`to_state` / :meth:`from_state` carry them
    between Flower messages (a ClientApp process may not live from one message to the next)."""

    params: RoundParams
    sid: int
    server_pk: bytes
    c_sk: bytes = b""
    s_sk: bytes = b""
    b: bytes = b""
    own_b_share: bytes = b""
    own_sk_share: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # sid -> (c_pk, s_pk)
    received: dict[int, bytes] = field(default_factory=dict)  # sid -> ciphertext to me
    phase: int = 0

    # -- step 0
    @classmethod
    def advertise(cls, config: Mapping[str, Any]) -> tuple[SiteRound, Payload]:
        params = RoundParams.decode(_field(config, "params"))
        sid = _int(config, "sid", 1, params.num_sites)
        me = cls(params, sid, _bytes(config, "server-pk", P.KEY_BYTES))
        me.c_sk, c_pk = P.new_keypair()
        me.s_sk, s_pk = P.new_keypair()
        me.phase = 1
        return me, {"c-pk": c_pk, "s-pk": s_pk}

    def _expect(self, phase: int) -> None:
        if self.phase != phase:
            raise SecAggError(f"message for step {phase} arrived in step {self.phase}")

    # -- step 1
    def share_keys(self, request: Mapping[str, Any]) -> Payload:
        self._expect(1)
        n = self.params.num_sites
        sids = _ints(request, "sids", n)
        c_pks = _blobs(request, "c-pks", len(sids), P.KEY_BYTES)
        s_pks = _blobs(request, "s-pks", len(sids), P.KEY_BYTES)
        mine = self.params.graph()[self.sid]
        if not set(sids) <= mine:
            raise SecAggError(f"server named non-neighbours {sorted(set(sids) - mine)[:5]}")
        if len(sids) + 1 < self.params.threshold:
            raise RoundAborted(
                f"{len(sids)} neighbour(s) + this site < threshold {self.params.threshold}"
            )
        self.peers = dict(zip(sids, zip(c_pks, s_pks, strict=True), strict=True))
        self.b = os.urandom(P.KEY_BYTES)
        holders = [*sids, self.sid]
        b_sh = P.share_secret(self.b, holders, self.params.threshold)
        sk_sh = P.share_secret(self.s_sk, holders, self.params.threshold)
        self.own_b_share, self.own_sk_share = b_sh[self.sid], sk_sh[self.sid]
        cts = []
        for v in sids:
            key = P.agree(self.c_sk, self.peers[v][0], ENC, self.params.nonce)
            aad = self.params.nonce + _sid_bytes(self.sid, v)
            cts.append(P.seal(key, _sid_bytes(self.sid, v) + b_sh[v] + sk_sh[v], aad))
        self.phase = 2
        return {"to": sids, "ct": cts, "commit": P.commit(self.b, self.params.nonce)}

    # -- step 2
    def masked_input(self, request: Mapping[str, Any], q: np.ndarray) -> tuple[np.ndarray, Payload]:
        self._expect(2)
        senders = _ints(request, "from", self.params.num_sites)
        cts = _blobs(request, "ct", len(senders), CT_BYTES)
        if not set(senders) <= set(self.peers):
            raise SecAggError("server forwarded shares from sites that are not my neighbours")
        if len(senders) + 1 < self.params.threshold:
            raise RoundAborted(
                f"shares from {len(senders)} neighbour(s) + this site < threshold "
                f"{self.params.threshold}"
            )
        if q.dtype != np.uint32 or q.shape != (self.params.length,):
            raise SecAggError(f"quantized update must be uint32[{self.params.length}]")
        self.received = dict(zip(senders, cts, strict=True))
        y = q + P.prg_mask(self.b, self.params.length)  # uint32: wraps modulo 2^32
        for v in senders:
            seed = P.agree(self.s_sk, self.peers[v][1], MASK, self.params.nonce)
            if pair_sign(self.sid, v) > 0:
                y += P.prg_mask(seed, self.params.length)
            else:
                y -= P.prg_mask(seed, self.params.length)
        key = P.agree(self.c_sk, self.server_pk, MAC, self.params.nonce)
        self.phase = 3
        return y, {
            "tag": P.mac(key, self.params.nonce, _sid_bytes(self.sid), memoryview(y).cast("B"))
        }

    # -- step 3
    def unmask(self, request: Mapping[str, Any]) -> Payload:
        self._expect(3)
        n, t = self.params.num_sites, self.params.threshold
        survivors = _ints(request, "survivors", n)
        dropped = _ints(request, "dropped", n)
        if set(survivors) & set(dropped):
            raise SecAggError("server asked for both secrets of a site (survivor and dropped)")
        if len(survivors) < t:
            raise RoundAborted(f"{len(survivors)} survivor(s) < threshold {t}")
        if self.sid not in survivors:
            raise SecAggError("this site is not among the survivors it is asked to unmask")
        out: Payload = {"b-sids": [self.sid], "b-shares": [self.own_b_share]}
        out.update({"sk-sids": [], "sk-shares": [], "failed": []})
        alive, gone = set(survivors), set(dropped)
        for u, ct in sorted(self.received.items()):
            if u not in alive and u not in gone:
                continue
            try:
                key = P.agree(self.c_sk, self.peers[u][0], ENC, self.params.nonce)
                aad = self.params.nonce + _sid_bytes(u, self.sid)
                plain = P.open_sealed(key, ct, aad)
            except SecAggError:
                out["failed"].append(u)  # a tampered share: reported, the others still count
                continue
            if len(plain) != 8 + 2 * P.SHARE_BYTES or plain[:8] != _sid_bytes(u, self.sid):
                out["failed"].append(u)
                continue
            b_share, sk_share = plain[8 : 8 + P.SHARE_BYTES], plain[8 + P.SHARE_BYTES :]
            kind = "b" if u in alive else "sk"
            out[f"{kind}-sids"].append(u)
            out[f"{kind}-shares"].append(b_share if kind == "b" else sk_share)
        self.phase = 4
        return out

    # -- persistence between messages (flat, ConfigRecord-compatible)
    def to_state(self) -> Payload:
        return {
            **{f"p.{k}": v for k, v in self.params.encode().items()},
            "sid": self.sid,
            "server-pk": self.server_pk,
            "c-sk": self.c_sk,
            "s-sk": self.s_sk,
            "b": self.b,
            "own-b": self.own_b_share,
            "own-sk": self.own_sk_share,
            "peer-sids": list(self.peers),
            "peer-c": [c for c, _ in self.peers.values()],
            "peer-s": [s for _, s in self.peers.values()],
            "recv-sids": list(self.received),
            "recv-ct": list(self.received.values()),
            "phase": self.phase,
        }

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> SiteRound:
        params = RoundParams.decode({k[2:]: v for k, v in s.items() if k.startswith("p.")})
        me = cls(params, int(s["sid"]), bytes(s["server-pk"]))
        me.c_sk, me.s_sk, me.b = bytes(s["c-sk"]), bytes(s["s-sk"]), bytes(s["b"])
        me.own_b_share, me.own_sk_share = bytes(s["own-b"]), bytes(s["own-sk"])
        me.peers = {
            int(i): (bytes(c), bytes(x))
            for i, c, x in zip(s["peer-sids"], s["peer-c"], s["peer-s"], strict=True)
        }
        me.received = {int(i): bytes(c) for i, c in zip(s["recv-sids"], s["recv-ct"], strict=True)}
        me.phase = int(s["phase"])
        return me


CT_BYTES = P.GCM_NONCE + 8 + 2 * P.SHARE_BYTES + 16  # nonce + (u, v, two shares) + GCM tag


# ---- the server ------------------------------------------------------------------------------


@dataclass
class SiteRecord:
    c_pk: bytes
    s_pk: bytes
    commit: bytes = b""
    cts: dict[int, bytes] = field(default_factory=dict)  # recipient -> ciphertext


class ServerRound:
    """The server's side of one round. It folds each masked vector into a running sum as it
    arrives (memory: one vector), and never holds a single site's unmasked update."""

    def __init__(self, params: RoundParams) -> None:
        self.params = params
        self.graph = params.graph()
        self._sk, self.pk = P.new_keypair()
        self.sites: dict[int, SiteRecord] = {}  # U1: advertised keys
        self.shared: set[int] = set()  # U2
        self.masked: set[int] = set()  # U3
        self.dropped: list[int] = []  # U2 - U3
        self.b_shares: dict[int, dict[int, bytes]] = {}
        self.sk_shares: dict[int, dict[int, bytes]] = {}
        self.failed: dict[int, list[int]] = {}  # reporter -> senders whose share failed
        self.total = np.zeros(params.length, dtype=np.uint32)
        self.rejected: dict[int, str] = {}

    def setup(self, sid: int) -> Payload:
        return {"params": self.params.encode(), "sid": sid, "server-pk": self.pk}

    def _need(self, have: int, what: str) -> None:
        if have < self.params.threshold:
            raise RoundAborted(
                f"{have} site(s) {what} < threshold {self.params.threshold}; round skipped"
            )

    # -- step 0 replies
    def receive_keys(self, sid: int, reply: Mapping[str, Any]) -> None:
        c_pk, s_pk = _bytes(reply, "c-pk", P.KEY_BYTES), _bytes(reply, "s-pk", P.KEY_BYTES)
        if any(r.c_pk == c_pk or r.s_pk == s_pk for r in self.sites.values()) or c_pk == s_pk:
            raise SecAggError("public key reused (copied from another site?)")
        self.sites[sid] = SiteRecord(c_pk, s_pk)

    def share_requests(self) -> dict[int, Payload]:
        self._need(len(self.sites), "advertised keys")
        out = {}
        for u in self.sites:
            peers = sorted(v for v in self.graph[u] if v in self.sites)
            out[u] = {
                "sids": peers,
                "c-pks": [self.sites[v].c_pk for v in peers],
                "s-pks": [self.sites[v].s_pk for v in peers],
            }
        return out

    # -- step 1 replies
    def receive_shares(self, sid: int, reply: Mapping[str, Any]) -> None:
        if sid not in self.sites:
            raise SecAggError(f"site {sid} shares keys without having advertised any")
        to = _ints(reply, "to", self.params.num_sites)
        cts = _blobs(reply, "ct", len(to), CT_BYTES)
        expected = {v for v in self.graph[sid] if v in self.sites}
        if set(to) != expected:
            raise SecAggError(f"site {sid} sent shares to {len(to)} sites, not its neighbours")
        self.sites[sid].commit = _bytes(reply, "commit", 32)
        self.sites[sid].cts = dict(zip(to, cts, strict=True))
        self.shared.add(sid)

    def mask_requests(self) -> dict[int, Payload]:
        self._need(len(self.shared), "shared their keys")
        out = {}
        for v in self.shared:
            senders = sorted(u for u in self.shared if v in self.sites[u].cts)
            out[v] = {"from": senders, "ct": [self.sites[u].cts[v] for u in senders]}
        return out

    # -- step 2 replies
    def receive_masked(self, sid: int, y: np.ndarray, reply: Mapping[str, Any]) -> None:
        if sid not in self.shared:
            raise SecAggError(f"site {sid} sent a masked input without having shared its keys")
        if sid in self.masked:
            raise SecAggError(f"site {sid} sent a second masked input")
        if (
            not isinstance(y, np.ndarray)
            or y.dtype != np.uint32
            or y.shape != (self.params.length,)
        ):
            raise SecAggError(f"masked input must be uint32[{self.params.length}]")
        key = P.agree(self._sk, self.sites[sid].c_pk, MAC, self.params.nonce)
        if not P.mac_ok(
            key, _field(reply, "tag"), self.params.nonce, _sid_bytes(sid), memoryview(y).cast("B")
        ):
            raise SecAggError(f"masked input of site {sid} failed authentication (tampered)")
        self.total += y
        self.masked.add(sid)

    def unmask_requests(self) -> dict[int, Payload]:
        self._need(len(self.masked), "sent masked inputs")
        self.dropped = sorted(self.shared - self.masked)
        survivors = sorted(self.masked)
        return {v: {"survivors": survivors, "dropped": self.dropped} for v in survivors}

    # -- step 3 replies
    def receive_unmask(self, sid: int, reply: Mapping[str, Any]) -> None:
        if sid not in self.masked:
            raise SecAggError(f"site {sid} sent shares without a masked input")
        n = self.params.num_sites
        b_sids, sk_sids = _ints(reply, "b-sids", n), _ints(reply, "sk-sids", n)
        b_sh = _blobs(reply, "b-shares", len(b_sids), P.SHARE_BYTES)
        sk_sh = _blobs(reply, "sk-shares", len(sk_sids), P.SHARE_BYTES)
        failed = _ints(reply, "failed", n)
        mine = self.graph[sid] | {sid}
        for u, s in zip(b_sids, b_sh, strict=True):
            if u in self.masked and u in mine:
                self.b_shares.setdefault(u, {})[sid] = s
        for u, s in zip(sk_sids, sk_sh, strict=True):
            if u in self.dropped and u in mine:
                self.sk_shares.setdefault(u, {})[sid] = s
        if failed:
            self.failed[sid] = failed

    def result(self) -> tuple[np.ndarray, int]:
        """``(sum, count)``: the float sum of the survivors' (dequantized) updates."""
        t, d, nonce = self.params.threshold, self.params.length, self.params.nonce
        total = self.total.copy()
        for u in sorted(self.masked):
            shares = self.b_shares.get(u, {})
            if len(shares) < t:
                raise RoundAborted(f"{len(shares)} share(s) of site {u}'s mask < threshold {t}")
            b = _rebuild(shares, t, f"site {u}'s mask seed")
            if P.commit(b, nonce) != self.sites[u].commit:
                raise RoundAborted(f"site {u}'s mask seed does not match its commitment")
            total -= P.prg_mask(b, d)
        for u in self.dropped:
            shares = self.sk_shares.get(u, {})
            if len(shares) < t:
                raise RoundAborted(f"{len(shares)} share(s) of dropped site {u}'s key < {t}")
            s_sk = _rebuild(shares, t, f"dropped site {u}'s key")
            if P.public_of(s_sk) != self.sites[u].s_pk:
                raise RoundAborted(f"dropped site {u}'s key does not match its public key")
            for v in sorted(self.masked):
                if v in self.sites[u].cts:  # v added the (u, v) mask: remove v's term
                    m = P.prg_mask(P.agree(s_sk, self.sites[v].s_pk, MASK, nonce), d)
                    if pair_sign(v, u) > 0:
                        total -= m
                    else:
                        total += m
        p = self.params
        return dequantize_sum(total, len(self.masked), p.clip_range, p.num_sites), len(self.masked)


def _rebuild(shares: Mapping[int, bytes], t: int, what: str) -> bytes:
    try:
        return P.reconstruct(shares, t)
    except SecAggError as e:  # a site sent a bad share: the sum cannot be trusted
        raise RoundAborted(f"cannot rebuild {what}: {e}") from e


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
