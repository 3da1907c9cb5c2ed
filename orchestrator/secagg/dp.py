"""Distributed DP under secure aggregation: each site clips and adds its share of the noise.

The server cannot clip or noise what it cannot see, so each of the ``n`` sampled sites clips its
update to ``C`` (L2) and adds Gaussian noise of std ``z C / sqrt(n)`` before quantizing: the sum
of the ``n`` updates then carries std ``z C``, as central DP-FedAvg would. Noise is continuous
(float64, before the stochastic rounding), not a discrete Gaussian: the rounding adds at most
one quantization step per coordinate and site, which the analysis ignores (docs/privacy.md).
If only ``m < n`` sites' inputs reach the sum, it carries std ``z C sqrt(m / n)``: the
multiplier that must go to the accountant is :func:`effective_multiplier`.
"""

from __future__ import annotations

import math

import numpy as np


def clip_l2(vec: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``vec`` scaled to L2 norm <= ``clip``, and its norm before clipping."""
    norm = float(np.linalg.norm(vec))
    if norm > clip:
        vec = vec * (clip / norm)
    return vec, norm


def site_noise_std(noise_multiplier: float, clip: float, num_sites: int) -> float:
    """Per-site std so that ``num_sites`` independent shares sum to std ``z * clip``."""
    return noise_multiplier * clip / math.sqrt(num_sites)


def effective_multiplier(noise_multiplier: float, num_sites: int, survivors: int) -> float:
    """The noise multiplier the sum of ``survivors`` of ``num_sites`` noised updates carries."""
    return noise_multiplier * math.sqrt(survivors / num_sites)


def privatize(
    vec: np.ndarray, clip: float, noise_multiplier: float, num_sites: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, float]:
    """``(clipped + noise, norm before clipping, noise std added)``."""
    out, norm = clip_l2(vec, clip)
    std = site_noise_std(noise_multiplier, clip, num_sites)
    if std > 0:
        out = out + rng.normal(0.0, std, out.shape)
    return out, norm, std
