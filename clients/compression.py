"""The site's compression stage: the last update stage before the reply (``clients/pipeline.py``).

``fp16`` and ``int8`` encode the update as it is; ``topk`` adds error feedback: the site keeps
what it did not send (the residual) as site state and adds it to its next update, so every
coordinate eventually reaches the server (``sent + residual == update + previous residual``,
exactly). The codecs are in :mod:`orchestrator.contract.compression`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from orchestrator.config.compression import CompressionConfig
from orchestrator.contract.arrays import Arrays
from orchestrator.contract.compression import encode_fp16, encode_int8, encode_topk

RESIDUAL = "topk-residual"
"""Site state name of top-k's error-feedback residual."""


class StateStore(Protocol):
    """Site state that survives rounds and restarts (``clients/site_state.py``)."""

    def load(self, name: str, like: Mapping[str, np.ndarray] | None = None) -> Arrays | None: ...

    def save(self, name: str, arrays: Mapping[str, np.ndarray]) -> None: ...


def rounding_rng(seed: int, server_round: int, site: str) -> np.random.Generator:
    """int8's stochastic-rounding noise: reproducible per (run seed, round, site)."""
    return np.random.default_rng([seed, server_round, zlib.crc32(site.encode())])


def error_feedback(
    update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None, ratio: float
) -> tuple[Arrays, Arrays]:
    """``(encoded, new residual)``: top-k of ``update + residual``; the rest is kept."""
    corrected = (
        {k: v + residual[k] for k, v in update.items()} if residual is not None else dict(update)
    )
    return encode_topk(corrected, ratio)


class CompressStage:
    """Encodes the update for the wire (``compression.kind``); top-k keeps its residual."""

    def __init__(self, cfg: CompressionConfig, seed: int, server_round: int) -> None:
        self.cfg, self.seed, self.server_round = cfg, seed, server_round
        detail = {
            "fp16": "float16 values",
            "int8": f"int8 codes, a float32 scale per {cfg.block_size} values, stochastic rounding",
            "topk": f"top {cfg.ratio:g} of entries + error feedback (residual kept at the site)",
        }.get(cfg.kind, "")
        self.name = f"compress: {cfg.kind} ({detail})"

    def __call__(self, update: Arrays, ctx: SiteContextLike) -> Arrays:
        kind = self.cfg.kind
        if kind == "fp16":
            return encode_fp16(update)
        if kind == "int8":
            rng = rounding_rng(self.seed, self.server_round, ctx.site)
            return encode_int8(update, self.cfg.block_size, rng)
        if kind == "topk":
            store = ctx.state
            if store is None:
                raise RuntimeError("top-k error feedback needs site state; none was given")
            like = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
            residual = store.load(RESIDUAL, like=like)
            encoded, new_residual = error_feedback(like, residual, self.cfg.ratio)
            store.save(RESIDUAL, new_residual)
            ctx.metrics["ef-residual-norm"] = float(
                np.sqrt(sum(float(np.dot(r.ravel(), r.ravel())) for r in new_residual.values()))
            )
            return encoded
        return update


class SiteContextLike(Protocol):
    site: str
    metrics: dict[str, float]
    state: StateStore | None
