"""Per-site update-norm clipping and reply weights: pure functions usable with any rule.

- :func:`clip_update_norms`: bound each update's L2 norm (fixed, or a multiple of the round's
  median norm), as scale factors to apply while reading (``ReplyView(scales=...)``).
- :func:`effective_weights`: a site's aggregation weight from its claimed example count
  (``examples`` | ``uniform`` | ``capped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.contract.privacy import update_norm  # noqa: F401  (one definition; re-exported)

WEIGHTING_MODES = ("examples", "uniform", "capped")
NORM_CLIP_MODES = ("fixed", "median")


@dataclass
class NormClip:
    """:func:`clip_update_norms`'s result: multiply update ``i`` by ``scales[i]``;
    ``clipped[i]`` when its norm exceeded ``threshold``."""

    scales: np.ndarray
    clipped: np.ndarray
    threshold: float


def clip_update_norms(
    norms: Sequence[float] | np.ndarray, clip_update_norm: float, mode: str = "fixed"
) -> NormClip:
    """Per-site L2-norm clipping factors (as in DP-FedAvg, McMahan et al. 2018, "Learning
    Differentially Private Recurrent Language Models", and the norm bounding of Sun et al. 2019,
    "Can You Really Backdoor Federated Learning?"):

        C = clip_update_norm                        (mode "fixed")
        C = clip_update_norm * median_k ||delta_k||  (mode "median")
        scale_k = min(1, C / ||delta_k||),   clipped_k = ||delta_k|| > C

    so ``scale_k * delta_k`` has norm ``min(||delta_k||, C)``. Apply it to any rule with
    ``ReplyView(store, scales=...)``. A zero update keeps scale 1.
    """
    n = np.asarray(norms, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"norms must be a non-empty 1-D sequence, got shape {n.shape}")
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"norms must be finite and >= 0, got {n.tolist()[:8]}")
    if not (np.isfinite(clip_update_norm) and clip_update_norm > 0):
        raise ValueError(f"clip_update_norm must be a finite number > 0, got {clip_update_norm}")
    if mode == "fixed":
        threshold = float(clip_update_norm)
    elif mode == "median":
        threshold = float(clip_update_norm * np.median(n))
    else:
        raise ValueError(f"norm clip mode must be one of {NORM_CLIP_MODES}, got {mode!r}")
    clipped = n > threshold
    scales = np.ones_like(n)
    scales[clipped] = threshold / n[clipped]
    return NormClip(scales, clipped, threshold)


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
