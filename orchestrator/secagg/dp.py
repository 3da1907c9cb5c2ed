"""Distributed DP under secure aggregation: each site clips and adds its share of the noise.

The server cannot clip or noise what it cannot see, so each sampled site clips its update to
``C`` (L2) and adds Gaussian noise before quantizing. A round completes only if at least ``t``
(the SecAgg threshold) sites' inputs reach the sum, so each site adds std ``z C / sqrt(t)``:
any completed round's sum carries std ``z C sqrt(m / t) >= z C`` (``m`` survivors), at least
what central DP-FedAvg adds, and the accountant is charged ``z`` (a lower bound; the multiplier
the sum really carries is :func:`effective_multiplier`). When every sampled site survives the
noise is ``sqrt(n / t)`` times the central one (1.22x for the default t = 2n/3).
Noise is continuous (float64, before the stochastic rounding), not a discrete Gaussian: the
rounding adds at most one quantization step per coordinate and site (docs/privacy.md).
"""

from __future__ import annotations

import math

import numpy as np

from orchestrator.contract.privacy import clip_to_norm


def clip_l2(vec: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``vec`` scaled to L2 norm <= ``clip``, and its norm before clipping: the one clip of
    :func:`orchestrator.contract.privacy.clip_to_norm` on the flattened update."""
    out, norm = clip_to_norm({"v": vec}, clip)
    return out["v"], norm


def site_noise_std(noise_multiplier: float, clip: float, min_survivors: int) -> float:
    """Per-site std so that any ``min_survivors`` shares sum to std ``z * clip``."""
    return noise_multiplier * clip / math.sqrt(min_survivors)


def effective_multiplier(noise_multiplier: float, min_survivors: int, survivors: int) -> float:
    """The noise multiplier the sum of ``survivors`` noised updates carries (>= z)."""
    return noise_multiplier * math.sqrt(survivors / min_survivors)


def privatize(
    vec: np.ndarray,
    clip: float,
    noise_multiplier: float,
    min_survivors: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float, float]:
    """``(clipped + noise, norm before clipping, noise std added)``."""
    out, norm = clip_l2(vec, clip)
    std = site_noise_std(noise_multiplier, clip, min_survivors)
    if std > 0:
        out = out + rng.normal(0.0, std, out.shape)
    return out, norm, std
