"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS): the math and the ``krum`` / ``multikrum`` strategies.

Tolerates ``f = strategy.num_byzantine`` attackers among K replies when ``K > 2f + 2``: each
reply is scored by its distance to its ``K - f - 2`` nearest neighbours, and attackers far from
the honest cluster score high and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.config.robust import declared_byzantine
from orchestrator.contract.arrays import Arrays
from strategies.reply_sources import ReplySource, as_source, chunk_size, empty_like
from strategies.robust import RobustStrategy

if TYPE_CHECKING:
    from orchestrator.config.federated import StrategyConfig


def pairwise_sq_distances(
    replies: ReplySource | np.ndarray, *, chunk_elems: int | None = None
) -> np.ndarray:
    """``D[i, l] = ||x_i - x_l||^2`` over all tensors, a ``(K, K)`` float64 matrix.

    Summed over coordinate blocks ``X`` (``K x chunk``, in float64) as
    ``||x_i||^2 + ||x_l||^2 - 2 x_i . x_l`` (one matrix product per block), so memory is
    ``K x K`` plus one block. Rounding can make the sum slightly negative; it is clamped at 0.
    """
    src = as_source(replies)
    step = chunk_size(src, chunk_elems)
    k = len(src)
    d = np.zeros((k, k))
    for key in src.keys:
        for _, block in src.chunks(key, step):
            x = block.astype(np.float64)
            gram = x @ x.T
            sq = np.diag(gram)
            d += sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(d, 0.0, out=d)
    d = (d + d.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return d


@dataclass
class KrumResult:
    """:func:`multi_krum`'s result: ``selected`` reply indices (best score first), every reply's
    ``scores`` and the ``distances`` matrix they came from."""

    arrays: Arrays
    selected: np.ndarray
    scores: np.ndarray
    distances: np.ndarray


def krum_scores(distances: np.ndarray, num_byzantine: int) -> np.ndarray:
    """``score_i = sum of the K - f - 2 smallest ||x_i - x_l||^2 over l != i`` (Blanchard et al.
    2017). Raises ``ValueError`` unless ``K > 2f + 2``."""
    k = distances.shape[0]
    _check_krum(k, num_byzantine)
    neighbours = k - num_byzantine - 2
    d = distances.astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :neighbours].sum(axis=1)


def _check_krum(k: int, f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"num_byzantine must be an integer >= 0, got {f!r}")
    if k <= 2 * f + 2:
        raise ValueError(
            f"Krum needs more than 2f + 2 replies to tolerate f={f} Byzantine sites (K > "
            f"{2 * f + 2}), got K={k}: lower num_byzantine to at most {max((k - 3) // 2, 0)} "
            f"or wait for more replies"
            if k >= 3
            else f"Krum needs at least 3 replies (K > 2f + 2 with f={f}), got K={k}"
        )


def multi_krum(
    replies: ReplySource | np.ndarray,
    num_byzantine: int,
    num_selected: int,
    *,
    weighted: bool = True,
    chunk_elems: int | None = None,
) -> KrumResult:
    """Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS). With ``f = num_byzantine`` and ``m = num_selected``:

        score_i = sum_{l in N_i} ||x_i - x_l||^2,  N_i = the K - f - 2 replies nearest to x_i
        S = the m replies with the lowest scores (ties: lower index first)
        out = sum_{i in S} a_i x_i / sum_{i in S} a_i,  a_i = n_i (weighted) or 1 (uniform)

    Needs ``K > 2f + 2`` and ``1 <= m <= K - f`` (more than K - f would always admit a Byzantine
    reply when f of them are present). ``m = 1`` is Krum: the result is the chosen reply.
    Two passes over the replies: the distances, then the average of the selected rows only.
    """
    src = as_source(replies)
    k = len(src)
    _check_krum(k, num_byzantine)
    if not 1 <= num_selected <= k - num_byzantine:
        raise ValueError(
            f"num_selected must be in [1, K - f] = [1, {k - num_byzantine}] for K={k} replies "
            f"and f={num_byzantine}, got {num_selected}"
        )
    step = chunk_size(src, chunk_elems)
    distances = pairwise_sq_distances(src, chunk_elems=step)
    scores = krum_scores(distances, num_byzantine)
    selected = np.argsort(scores, kind="stable")[:num_selected]
    rows = np.sort(selected)
    a = src.weights[rows] if weighted else np.ones(len(rows))
    coef = a / a.sum()
    out = empty_like(src)
    for key in src.keys:
        flat = out[key].reshape(-1)
        for sl, block in src.chunks(key, step, rows):
            flat[sl] = coef @ block.astype(np.float64)
    return KrumResult(out, selected, scores, distances)


def krum(
    replies: ReplySource | np.ndarray,
    num_byzantine: int,
    *,
    chunk_elems: int | None = None,
) -> KrumResult:
    """Krum (Blanchard et al. 2017): the single reply with the lowest score

        score_i = sum of ||x_i - x_l||^2 over the K - f - 2 replies x_l nearest to x_i,

    i.e. :func:`multi_krum` with ``m = 1``. Needs ``K > 2f + 2``.
    """
    return multi_krum(replies, num_byzantine, 1, weighted=False, chunk_elems=chunk_elems)


@dataclass(frozen=True)
class KrumRule:
    """:func:`multi_krum` as a rule: ``num_selected`` 1 is Krum (the chosen reply itself),
    None is Multi-Krum over ``K - f`` replies; notes the discarded sites."""

    num_byzantine: int = 1
    num_selected: int | None = 1
    weighted: bool = False

    def describe(self) -> str:
        if self.num_selected == 1 and not self.weighted:
            return f"Krum (f={self.num_byzantine}; weights ignored)"
        return f"Multi-Krum (f={self.num_byzantine}, m={self.num_selected or 'K-f'})"

    def __call__(self, view: ReplySource, notes: dict[str, str]) -> Arrays:
        k, sites = len(view), view.sites
        m = self.num_selected or k - self.num_byzantine
        kr = multi_krum(view, self.num_byzantine, min(m, k), weighted=self.weighted)
        chosen = set(kr.selected.tolist())
        for i in range(k):
            if i not in chosen:
                notes[sites[i]] = f"discarded (Krum score {kr.scores[i]:.3g})"
        return kr.arrays


class Krum(RobustStrategy):
    """``strategy.name=krum``: the one reply with the lowest Krum score."""

    name = "krum"

    @classmethod
    def default_rule(cls) -> KrumRule:
        return KrumRule()

    @classmethod
    def rule_from_config(cls, s: StrategyConfig) -> KrumRule:
        return KrumRule(declared_byzantine(s))


class MultiKrum(RobustStrategy):
    """``strategy.name=multikrum``: the weighted mean of the ``num_selected`` best scores."""

    name = "multikrum"

    @classmethod
    def default_rule(cls) -> KrumRule:
        return KrumRule(num_selected=None, weighted=True)

    @classmethod
    def rule_from_config(cls, s: StrategyConfig) -> KrumRule:
        return KrumRule(declared_byzantine(s), s.num_selected, weighted=True)
