"""The server's side of one SecAgg+ round (see :mod:`orchestrator.secagg.protocol`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.secagg import primitives as P
from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.protocol import (
    CT_BYTES,
    MAC,
    MASK,
    Payload,
    RoundAborted,
    RoundParams,
    pair_sign,
    req_blobs,
    req_bytes,
    req_field,
    req_ids,
    sid_bytes,
)
from orchestrator.secagg.quantize import dequantize_sum

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
        c_pk, s_pk = req_bytes(reply, "c-pk", P.KEY_BYTES), req_bytes(reply, "s-pk", P.KEY_BYTES)
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
        to = req_ids(reply, "to", self.params.num_sites)
        cts = req_blobs(reply, "ct", len(to), CT_BYTES)
        expected = {v for v in self.graph[sid] if v in self.sites}
        if set(to) != expected:
            raise SecAggError(f"site {sid} sent shares to {len(to)} sites, not its neighbours")
        self.sites[sid].commit = req_bytes(reply, "commit", 32)
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
            key, req_field(reply, "tag"), self.params.nonce, sid_bytes(sid), memoryview(y).cast("B")
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
        b_sids, sk_sids = req_ids(reply, "b-sids", n), req_ids(reply, "sk-sids", n)
        b_sh = req_blobs(reply, "b-shares", len(b_sids), P.SHARE_BYTES)
        sk_sh = req_blobs(reply, "sk-shares", len(sk_sids), P.SHARE_BYTES)
        failed = req_ids(reply, "failed", n)
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
