"""A site's side of one SecAgg+ round (see :mod:`orchestrator.secagg.protocol`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.secagg import primitives as P
from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.protocol import (
    CT_BYTES,
    ENC,
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
    req_int,
    sid_bytes,
)

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
        params = RoundParams.decode(req_field(config, "params"))
        sid = req_int(config, "sid", 1, params.num_sites)
        me = cls(params, sid, req_bytes(config, "server-pk", P.KEY_BYTES))
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
        sids = req_ids(request, "sids", n)
        c_pks = req_blobs(request, "c-pks", len(sids), P.KEY_BYTES)
        s_pks = req_blobs(request, "s-pks", len(sids), P.KEY_BYTES)
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
            aad = self.params.nonce + sid_bytes(self.sid, v)
            cts.append(P.seal(key, sid_bytes(self.sid, v) + b_sh[v] + sk_sh[v], aad))
        self.phase = 2
        return {"to": sids, "ct": cts, "commit": P.commit(self.b, self.params.nonce)}

    # -- step 2
    def masked_input(self, request: Mapping[str, Any], q: np.ndarray) -> tuple[np.ndarray, Payload]:
        self._expect(2)
        senders = req_ids(request, "from", self.params.num_sites)
        cts = req_blobs(request, "ct", len(senders), CT_BYTES)
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
            "tag": P.mac(key, self.params.nonce, sid_bytes(self.sid), memoryview(y).cast("B"))
        }

    # -- step 3
    def unmask(self, request: Mapping[str, Any]) -> Payload:
        self._expect(3)
        n, t = self.params.num_sites, self.params.threshold
        survivors = req_ids(request, "survivors", n)
        dropped = req_ids(request, "dropped", n)
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
                aad = self.params.nonce + sid_bytes(u, self.sid)
                plain = P.open_sealed(key, ct, aad)
            except SecAggError:
                out["failed"].append(u)  # a tampered share: reported, the others still count
                continue
            if len(plain) != 8 + 2 * P.SHARE_BYTES or plain[:8] != sid_bytes(u, self.sid):
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
