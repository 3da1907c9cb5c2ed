"""Metric names and formulas both sides of a federation agree on.

Sites compute them on their held-out rows; the server pools them across sites. Both import from
here so a site's ``macro-f1`` and the server's pooled one are the same formula.
"""

from __future__ import annotations

import math

import numpy as np

NUM_EXAMPLES = "num-examples"
"""Reply metric: the weight of a reply (a site's training or held-out rows)."""
CONFUSION = "confusion"
"""Evaluate-reply metric (classification): the flattened ``k x k`` confusion matrix,
rows = true class."""
UPDATE_NORM = "update-norm"
"""L2 norm of a site's update as the server received it (before any server-side clip). Computed
by the server, never taken from a reply: the number to choose ``privacy.clip_norm`` from."""

PERPLEXITY_MAX_LOG = 50.0
"""Losses above this are clamped before ``exp`` so a diverged model reports ~5e21, not inf."""


def perplexity(loss: float) -> float:
    """``exp(loss)``, clamped (see :data:`PERPLEXITY_MAX_LOG`)."""
    return math.exp(min(float(loss), PERPLEXITY_MAX_LOG))


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 from a flattened or square confusion matrix (rows = true class).

    Classes absent from both truth and predictions are left out of the macro average.
    """
    c = np.asarray(confusion, dtype=np.float64)
    k = math.isqrt(c.size)
    if k * k != c.size:
        raise ValueError(f"confusion matrix of {c.size} entries is not square")
    c = c.reshape(k, k)
    tp = np.diag(c)
    support, predicted = c.sum(axis=1), c.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1e-12), 0.0)
    total = c.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro-f1": float(f1[present].mean()) if present.any() else 0.0,
    }
