"""Fold stages that need the whole round (robust rules, capped weights, median-relative
clipping) and the streaming update-norm clip, wired to ``strategies.robust``'s math.

:class:`StoredAggregator` keeps each accepted reply in a :class:`~strategies.reply_store.
ReplyStore` on disk (in the run directory), then applies weighting, optional norm clipping and
the rule through coordinate chunks, so the server's RAM stays a few model sizes whatever the
number of sites. :class:`NormClipStage` clips each reply as it arrives (a fixed bound needs no
other reply), so plain FedAvg with a fixed clip still streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from strategies.math import Arrays, RunningSum
from strategies.pipeline import Aggregate, Aggregator, Reply
from strategies.reply_store import ReplyStore
from strategies.robust import (
    ReplyView,
    centered_clipping,
    coordinate_median,
    multi_krum,
    trimmed_mean,
    trimmed_per_side,
    weighted_mean,
)
from strategies.weights import clip_update_norms, effective_weights, update_norm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleConfig:
    """The settings a stored rule reads (a view of ``strategy.*``)."""

    rule: str = "mean"
    """``mean`` (weighted) | ``median`` | ``trimmed_mean`` | ``krum`` | ``multikrum`` |
    ``centered_clip``."""
    weighting: str = "examples"
    weight_cap: float = 3.0
    clip_update_norm: float = 0.0
    clip_relative: bool = False
    trim_fraction: float = 0.2
    num_byzantine: int = 1
    num_selected: int | None = None
    clip_radius: float = 1.0
    clip_iters: int = 3

    def describe(self) -> str:
        parts = {
            "mean": f"weighted mean ({self.weighting} weights)",
            "median": "coordinate-wise median",
            "trimmed_mean": f"trimmed mean (trim {self.trim_fraction:g} each side)",
            "krum": f"Krum (f={self.num_byzantine})",
            "multikrum": f"Multi-Krum (f={self.num_byzantine}, m={self.num_selected or 'K-f'})",
            "centered_clip": f"centered clipping (tau={self.clip_radius:g}, "
            f"{self.clip_iters} iter)",
        }[self.rule]
        if self.clip_update_norm:
            kind = "x median norm" if self.clip_relative else "(L2)"
            parts = f"clip update norms to {self.clip_update_norm:g} {kind}, then {parts}"
        return f"{parts}; replies kept on disk, folded in coordinate chunks"


class NormClipStage:
    """Reply stage: scale an update to L2 norm at most ``bound`` (over all its tensors)."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.name = f"clip update L2 norm to {bound:g}"

    def __call__(self, reply: Reply, server_round: int) -> Reply:
        norm = update_norm(reply.update)
        if norm <= self.bound:
            return reply
        s = self.bound / norm
        scaled = {k: (v * v.dtype.type(s)) for k, v in reply.update.items()}
        note = f"clipped: norm {norm:.3g} > {self.bound:g}"
        return replace(reply, update=scaled, note=note)


class StoredAggregator(Aggregator):
    """Keeps the round's replies on disk, then applies ``cfg`` (weights, clip, rule)."""

    def __init__(
        self, cfg: RuleConfig, work_dir: Path, center: Mapping[str, np.ndarray] | None = None
    ) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self._store: ReplyStore | None = None  # created at the first reply (not by --dry-run)
        self.center = center
        self.name = cfg.describe()
        self.last_center: Arrays | None = None

    @property
    def store(self) -> ReplyStore:
        if self._store is None:
            self._store = ReplyStore(self.work_dir)
        return self._store

    def add(self, reply: Reply) -> None:
        self.store.add(reply.site, reply.update, reply.weight)

    @property
    def count(self) -> int:
        return 0 if self._store is None else len(self._store)

    def result(self) -> Aggregate:
        try:
            return self._result()
        finally:
            self.store.close()

    def _result(self) -> Aggregate:
        c, store = self.cfg, self.store
        store.sort_by_site()  # the result no longer depends on the order replies arrived in
        sites = store.sites
        notes: dict[str, str] = {}
        weights = effective_weights(store.weights, c.weighting, c.weight_cap)
        for i in np.flatnonzero(weights < store.weights):
            notes[sites[i]] = f"weight capped {store.weights[i]:g} -> {weights[i]:g}"
        scales = None
        if c.clip_update_norm:
            mode = "median" if c.clip_relative else "fixed"
            clip = clip_update_norms(store.norms, c.clip_update_norm, mode)
            scales = clip.scales
            for i in np.flatnonzero(clip.clipped):
                notes[sites[i]] = f"clipped: norm {store.norms[i]:.3g} > {clip.threshold:.3g}"
        view = ReplyView(store, scales=scales, weights=weights)
        arrays = self._rule(view, notes)
        self.last_center = arrays
        return Aggregate(RunningSum.of_mean(arrays, len(sites)), notes)

    def _rule(self, view: ReplyView, notes: dict[str, str]) -> Arrays:
        c, sites, k = self.cfg, view.sites, len(view)
        if c.rule == "mean":
            return weighted_mean(view)
        if c.rule == "median":
            return coordinate_median(view)
        if c.rule == "trimmed_mean":
            if trimmed_per_side(k, c.trim_fraction) == 0:
                log.warning(
                    "trimmed_mean: trim_fraction=%g of %d replies trims nothing (plain mean); "
                    "raise strategy.trim_fraction to at least %.2f",
                    c.trim_fraction,
                    k,
                    1 / k,
                )
            tm = trimmed_mean(view, c.trim_fraction)
            total = sum(int(np.prod(s)) for s in view.shapes.values())
            for i, n in enumerate(tm.trimmed):
                if n:
                    notes[sites[i]] = f"trimmed at {int(n)}/{total} coordinates"
            return tm.arrays
        if c.rule in ("krum", "multikrum"):
            m = 1 if c.rule == "krum" else (c.num_selected or k - c.num_byzantine)
            kr = multi_krum(view, c.num_byzantine, min(m, k), weighted=c.rule == "multikrum")
            chosen = set(kr.selected.tolist())
            for i in range(k):
                if i not in chosen:
                    notes[sites[i]] = f"discarded (Krum score {kr.scores[i]:.3g})"
            return kr.arrays
        if c.rule == "centered_clip":
            cc = centered_clipping(view, c.clip_radius, clip_iters=c.clip_iters, v0=self.center)
            for i in np.flatnonzero(cc.clipped):
                notes[sites[i]] = f"clipped at distance {cc.distances[i]:.3g} > {c.clip_radius:g}"
            return cc.arrays
        raise ValueError(f"unknown aggregation rule {c.rule!r}")
