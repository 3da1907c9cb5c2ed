"""Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine Robust
Optimization", ICML; arXiv:2012.10333): the math and the ``centered_clip`` strategy.

Each reply pulls the center by at most ``tau / K`` per iteration (``tau =
strategy.clip_radius``), so an honest majority (``f <= (K - 1) // 2``) keeps it near the honest
updates. The center starts from the previous round's aggregate (the paper's choice), which the
strategy keeps in its checkpoint so a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.contract.arrays import Arrays
from orchestrator.contract.privacy import clip_scale
from strategies.fold import StoredAggregator
from strategies.pipeline import Aggregator
from strategies.reply_sources import ReplySource, as_source, chunk_size, empty_like
from strategies.robust import RobustStrategy
from strategies.running_sum import RunningSum

if TYPE_CHECKING:
    from orchestrator.config.federated import StrategyConfig


@dataclass
class CenteredClipResult:
    """:func:`centered_clipping`'s result. ``distances[i] = ||x_i - v||`` with ``v`` the center
    at the start of the last iteration; ``clipped[i] = distances[i] > tau`` there."""

    arrays: Arrays
    clipped: np.ndarray
    distances: np.ndarray


def centered_clipping(
    replies: ReplySource | np.ndarray,
    tau: float,
    *,
    clip_iters: int = 1,
    v0: Mapping[str, np.ndarray] | np.ndarray | None = None,
    weighted: bool = False,
    chunk_elems: int | None = None,
) -> CenteredClipResult:
    """Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine
    Robust Optimization", ICML; arXiv:2012.10333), ``clip_iters`` = L iterations from ``v0``:

        v_{l+1} = v_l + 1/K sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

    Norms are over the whole update (all tensors). ``v0`` is the previous round's aggregate (the
    paper's choice) or zeros when None; with ``weighted=True`` the 1/K becomes
    ``n_i / sum_k n_k`` (the paper is uniform). A reply at distance 0 moves nothing.

    L + 1 passes over the replies: the first distances, then one per iteration (each pass also
    sums the next iteration's distances). Memory: the center (one model size) plus one block.
    """
    src = as_source(replies)
    k = len(src)
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau (the clipping radius) must be a finite number > 0, got {tau}")
    if isinstance(clip_iters, bool) or not isinstance(clip_iters, int) or clip_iters < 1:
        raise ValueError(f"clip_iters must be an integer >= 1, got {clip_iters!r}")
    step = chunk_size(src, chunk_elems)
    v = _start_center(src, v0)
    share = src.weights / src.weights.sum() if weighted else np.full(k, 1.0 / k)

    sq = np.zeros(k)  # ||x_i - v||^2 for the current v
    for key in src.keys:
        flat = v[key].reshape(-1)
        for sl, block in src.chunks(key, step):
            diff = block.astype(np.float64) - flat[sl]
            sq += np.einsum("ij,ij->i", diff, diff)
    for it in range(clip_iters):
        dist = np.sqrt(sq)
        # The one clip rule, on each reply's distance to the center (distance 0 keeps 1).
        coef = share * np.array([clip_scale(float(d), tau) for d in dist])
        last = it == clip_iters - 1
        sq = np.zeros(k)
        for key in src.keys:
            flat = v[key].reshape(-1)
            for sl, block in src.chunks(key, step):
                x = block.astype(np.float64)
                diff = x - flat[sl]
                flat[sl] = flat[sl] + coef @ diff  # rounded to v's dtype here
                if not last:  # the next iteration's distances, to the rounded center
                    diff = x - flat[sl]
                    sq += np.einsum("ij,ij->i", diff, diff)
    return CenteredClipResult(v, dist > tau, dist)


def _start_center(src: ReplySource, v0: Mapping[str, np.ndarray] | np.ndarray | None) -> Arrays:
    """The first center: a copy of ``v0`` (checked against the replies' tensors), or zeros."""
    v = empty_like(src)
    if v0 is None:
        for a in v.values():
            a.fill(0)
        return v
    if isinstance(v0, np.ndarray):
        v0 = {"x": v0}
    if set(v0) != set(src.keys):
        raise ValueError(f"v0 has keys {sorted(v0)[:4]}, the replies {src.keys[:4]}")
    for key, a in v.items():
        if tuple(np.shape(v0[key])) != a.shape:
            raise ValueError(f"v0[{key!r}] has shape {np.shape(v0[key])}, expected {a.shape}")
        a[...] = v0[key]
    return v


@dataclass(frozen=True)
class CenteredClipRule:
    """:func:`centered_clipping` from ``center`` (None = zeros); notes the clipped sites."""

    tau: float = 1.0
    clip_iters: int = 3
    center: Mapping[str, np.ndarray] | None = None

    def describe(self) -> str:
        return f"centered clipping (tau={self.tau:g}, {self.clip_iters} iter; weights ignored)"

    def __call__(self, view: ReplySource, notes: dict[str, str]) -> Arrays:
        cc = centered_clipping(view, self.tau, clip_iters=self.clip_iters, v0=self.center)
        sites = view.sites
        for i in np.flatnonzero(cc.clipped):
            notes[sites[i]] = f"clipped at distance {cc.distances[i]:.3g} > {self.tau:g}"
        return cc.arrays


class CenteredClip(RobustStrategy):
    """``strategy.name=centered_clip``; each round starts from the last aggregate."""

    name = "centered_clip"
    rule: CenteredClipRule

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._center: Arrays | None = None
        self._last: StoredAggregator | None = None

    @classmethod
    def default_rule(cls) -> CenteredClipRule:
        return CenteredClipRule()

    @classmethod
    def rule_from_config(cls, s: StrategyConfig) -> CenteredClipRule:
        return CenteredClipRule(s.clip_radius, s.clip_iters)

    def make_aggregator(self, server_round: int) -> Aggregator:
        rule = replace(self.rule, center=self._center)
        self._last = StoredAggregator(self.fold, rule, self.work_dir)
        return self._last

    def server_update(self, global_: Arrays, acc: RunningSum, server_round: int) -> Arrays:
        if self._last is not None:
            # Karimireddy et al. start each round's clipping from the last aggregate.
            last = self._last.last_aggregate or {}
            self._center = {k: np.array(v) for k, v in last.items()}
        return super().server_update(global_, acc, server_round)

    def state_arrays(self) -> Arrays:
        return {f"center.{k}": v for k, v in (self._center or {}).items()}

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state(meta, arrays)
        center = {k[7:]: np.array(v) for k, v in arrays.items() if k.startswith("center.")}
        self._center = center or None
