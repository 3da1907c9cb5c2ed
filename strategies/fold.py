"""The fold stage's settings, and the fold that keeps a whole round's replies.

:class:`FoldSettings` is how replies are combined (``strategy.weighting`` resolved, the weight
cap, the server's norm clip, the running sum's precision), with the tolerance line ``--dry-run``
shows. Most rounds fold each reply on arrival (:class:`strategies.weighted_mean.WeightedMean`).
:class:`StoredAggregator` is for what needs every reply first (a robust rule, capped weights, a
clip relative to the median norm): it keeps each accepted reply in a
:class:`~strategies.reply_store.ReplyStore` on disk (in the run directory), then applies the
weights, the clip and the rule through coordinate chunks, so the server's RAM stays a few model
sizes whatever the number of sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from orchestrator.config.robust import describe_tolerance
from orchestrator.contract.arrays import Arrays
from strategies.norm_clip import NormClipStage, clip_update_norms
from strategies.pipeline import Aggregate, AggregateStage, Aggregator, Reply, ReplyStage
from strategies.reply_sources import ReplySource, ReplyView
from strategies.reply_store import ReplyStore
from strategies.running_sum import RunningSum
from strategies.weighted_mean import WEIGHTING_MODES, effective_weights

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob
    from strategies.privacy import CentralDP


@dataclass(frozen=True)
class FoldSettings:
    """How a strategy combines a round's replies (a view of ``strategy.*``)."""

    weighting: str = "examples"
    """``examples`` | ``uniform`` | ``capped`` (``auto`` is resolved by :meth:`from_config`)."""
    weight_cap: float = 3.0
    clip_update_norm: float = 0.0
    clip_relative: bool = False
    accumulate: str = "float64"
    """Precision of the streamed running sum (``strategies.running_sum.RunningSum``)."""
    weighting_source: str = ""
    """Why this weighting, for ``--dry-run`` (e.g. ``strategy.weighting=auto under DP``)."""
    tolerance: str = ""
    """How many attackers the configured rule tolerates of how many sampled sites."""

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTING_MODES:
            raise ValueError(
                f"weighting must be one of {WEIGHTING_MODES} (FoldSettings.from_config resolves "
                f"'auto'), got {self.weighting!r}"
            )

    @classmethod
    def from_config(cls, job: FederatedJob) -> FoldSettings:
        s, p = job.strategy, job.privacy
        if s.weighting != "auto":
            source = f"strategy.weighting={s.weighting}"
        elif p.enabled or p.secure_aggregation:
            mode = (
                "privacy.secure_aggregation" if p.secure_aggregation else f"privacy.mode={p.mode}"
            )
            source = f"strategy.weighting=auto: uniform under {mode}"
        else:
            source = "strategy.weighting=auto: by num-examples without privacy"
        return cls(
            weighting=job.weighting,
            weight_cap=s.weight_cap,
            clip_update_norm=s.clip_update_norm,
            clip_relative=s.clip_relative,
            accumulate=s.accumulate,
            weighting_source=source,
            tolerance=describe_tolerance(s, job.federation.sampled_sites),
        )

    @property
    def needs_round(self) -> bool:
        """The weights or the clip depend on every reply of the round (not foldable on arrival)."""
        return self.weighting == "capped" or bool(self.clip_update_norm and self.clip_relative)

    def describe(self) -> list[str]:
        """The weighting and tolerance lines of ``--dry-run``."""
        weights = f"weights: {self.weighting}"
        lines = [f"{weights} ({self.weighting_source})" if self.weighting_source else weights]
        return [*lines, f"robustness: {self.tolerance}"] if self.tolerance else lines


def server_stages(
    fold: FoldSettings, central_dp: CentralDP | None, *, clip_on_arrival: bool
) -> tuple[list[ReplyStage], list[AggregateStage]]:
    """The reply and aggregate stages around the fold: the server's norm clip on arrival (a
    fixed bound, unless the rule reads the round and clips there), central DP's clip and noise."""
    reply_stages: list[ReplyStage] = []
    aggregate_stages: list[AggregateStage] = []
    if fold.clip_update_norm and not fold.clip_relative and clip_on_arrival:
        # A fixed bound needs no other reply: clip each reply as it streams in.
        reply_stages.append(NormClipStage(fold.clip_update_norm))
    if central_dp is not None:
        # Central DP: clip each reply as it arrives, noise the sum (strategies/privacy.py).
        reply_stages.append(central_dp.clip_stage)
        aggregate_stages.append(central_dp.noise_stage)
    return reply_stages, aggregate_stages


class Rule(Protocol):
    """A rule over a stored round: the aggregate of ``view``, with per-site ``notes``."""

    def describe(self) -> str: ...

    def __call__(self, view: ReplySource, notes: dict[str, str]) -> Arrays: ...


class StoredAggregator(Aggregator):
    """Keeps the round's replies on disk, then applies the weights, the clip and ``rule``."""

    def __init__(self, fold: FoldSettings, rule: Rule, work_dir: Path) -> None:
        self.fold = fold
        self.rule = rule
        self.work_dir = work_dir
        self._store: ReplyStore | None = None  # created at the first reply (not by --dry-run)
        self.last_aggregate: Arrays | None = None
        name = rule.describe()
        if fold.clip_update_norm:
            kind = "x median norm" if fold.clip_relative else "(L2)"
            name = f"clip update norms to {fold.clip_update_norm:g} {kind}, then {name}"
        self.name = f"{name}; replies kept on disk, folded in coordinate chunks"

    @property
    def store(self) -> ReplyStore:
        if self._store is None:
            self._store = ReplyStore(self.work_dir)
        return self._store

    def add(self, reply: Reply) -> None:
        self.store.add(reply.site, reply.update, reply.weight, reply.norm)

    @property
    def count(self) -> int:
        return 0 if self._store is None else len(self._store)

    def result(self) -> Aggregate:
        try:
            return self._result()
        finally:
            self.store.close()

    def _result(self) -> Aggregate:
        c, store = self.fold, self.store
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
        arrays = self.rule(ReplyView(store, scales=scales, weights=weights), notes)
        self.last_aggregate = arrays
        return Aggregate(RunningSum.of_mean(arrays, len(sites)), notes)
