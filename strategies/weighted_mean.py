"""The weighted mean, FedAvg's rule: each site's weight, and the mean streamed or stored.

    a_k = n_k (examples) | 1 (uniform) | min(n_k, cap * median_l n_l) (capped)
    delta = sum_k a_k delta_k / sum_k a_k

:class:`WeightedMean` folds each reply as it arrives (memory: one update-sized sum);
:func:`weighted_mean` reads a stored round (``strategies/fold.py``) when the weights or clip
factors depend on the whole round and so cannot be applied on arrival. :class:`MeanRule` is
that stored mean as a rule. A weighted mean tolerates no attacker: one site moves it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.contract.arrays import Arrays
from strategies.pipeline import Aggregate, Aggregator, Reply
from strategies.reply_sources import ReplySource, as_source, chunk_size, empty_like
from strategies.running_sum import RunningSum

WEIGHTING_MODES = ("examples", "uniform", "capped")


def effective_weights(
    n: Sequence[float] | np.ndarray, mode: str, cap: float | None = None
) -> np.ndarray:
    """Each site's aggregation weight from its claimed example count ``n_k``:

        examples:  a_k = n_k
        uniform:   a_k = 1
        capped:    a_k = min(n_k, cap * median_l n_l)

    ``capped`` bounds what one site gains by over-reporting ``n_k`` (a site claiming 1e30
    examples would otherwise own the weighted mean) while keeping honest size differences up to
    ``cap`` times the typical site (cf. Sun et al. 2019, "Can You Really Backdoor Federated
    Learning?", which caps each site's influence).
    """
    a = np.asarray(n, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"example counts must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"example counts must be finite and > 0, got {a.tolist()[:8]}")
    if mode == "examples":
        return a.copy()
    if mode == "uniform":
        return np.ones_like(a)
    if mode == "capped":
        if cap is None or not (np.isfinite(cap) and cap > 0):
            raise ValueError(
                f"weighting 'capped' needs cap > 0 (a multiple of the median example count), "
                f"got {cap}"
            )
        return np.minimum(a, cap * np.median(a))
    raise ValueError(f"weighting must be one of {WEIGHTING_MODES}, got {mode!r}")


def weighted_mean(
    replies: ReplySource | np.ndarray, *, weighted: bool = True, chunk_elems: int | None = None
) -> Arrays:
    """The (weighted) mean over the replies, read block by block:

        out = sum_k a_k x_k / sum_k a_k,   a_k = the source's weights (weighted) or 1

    FedAvg over a store: what a strategy needs when the weights or clipping scales depend on the
    whole round (``effective_weights(..., "capped")``, ``clip_update_norms(..., "median")``) and
    so cannot be applied while folding replies as they arrive. Sums in float64.
    """
    src = as_source(replies)
    a = src.weights if weighted else np.ones(len(src))
    coef = a / a.sum()
    step = chunk_size(src, chunk_elems)
    out = empty_like(src)
    for key in src.keys:
        flat = out[key].reshape(-1)
        for sl, block in src.chunks(key, step):
            flat[sl] = coef @ block.astype(np.float64)
    return out


@dataclass(frozen=True)
class MeanRule:
    """The stored weighted mean as a rule of :class:`~strategies.fold.StoredAggregator`."""

    weighting: str = "examples"

    def describe(self) -> str:
        return f"weighted mean ({self.weighting} weights)"

    def __call__(self, view: ReplySource, notes: dict[str, str]) -> Arrays:
        return weighted_mean(view)


class WeightedMean(Aggregator):
    """``sum_k n_k delta_k / sum_k n_k``, folded on arrival (memory: one update-sized sum)."""

    def __init__(self, accumulate: np.dtype | str = "float64", uniform: bool = False) -> None:
        self.sum = RunningSum(accumulate)
        self.uniform = uniform
        by = "uniform weights" if uniform else "num-examples"
        self.name = f"weighted mean ({by}, {np.dtype(accumulate).name} sum, streamed)"

    def add(self, reply: Reply) -> None:
        self.sum.fold(reply.update, 1.0 if self.uniform else reply.weight)

    def result(self) -> Aggregate:
        return Aggregate(self.sum)

    @property
    def count(self) -> int:
        return self.sum.count
