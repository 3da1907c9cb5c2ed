"""Fixed-point quantization into uint32 with stochastic rounding, sized so a sum cannot overflow.

Each coordinate is clipped to ``[-r, r]`` and mapped to an integer in ``[0, L]`` with
``L = (2^32 - 1) // n`` for ``n`` sites: the exact sum of ``n`` such values is at most
``n * L < 2^32``, so adding them (and any masks) modulo 2^32 and removing the masks gives the
exact integer sum. Stochastic rounding (``floor(y + U)``, ``U ~ U[0, 1)``) keeps the dequantized
value unbiased; the error per coordinate and site is below one step ``2r / L``.
"""

from __future__ import annotations

import numpy as np

MODULUS_BITS = 32


def levels(num_sites: int) -> int:
    """Quantization levels ``L`` for ``num_sites`` summands (their sum stays below 2^32)."""
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    return (2**MODULUS_BITS - 1) // num_sites


def step(clip_range: float, num_sites: int) -> float:
    """One quantization step: the worst-case error of one coordinate of one site."""
    return 2.0 * clip_range / levels(num_sites)


def quantize(
    x: np.ndarray, clip_range: float, num_sites: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``(q, clipped)``: ``x`` as uint32 in ``[0, L]``; ``clipped`` counts coordinates beyond
    ``clip_range`` (they are clipped to it)."""
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    lv = levels(num_sites)
    y = np.clip(np.asarray(x).ravel(), -clip_range, clip_range, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError("update holds NaN or infinite values")
    clipped = int(np.count_nonzero(np.abs(x) > clip_range))
    # In place from here: a 10M-value update is 80 MB per float64 temporary.
    y += clip_range
    y *= lv / (2.0 * clip_range)
    y += rng.random(y.shape)
    np.floor(y, out=y)
    np.minimum(y, lv, out=y)  # floor(L + U) could reach L + 1 only if U rounded up to 1.0
    return y.astype(np.uint32), clipped


def dequantize_sum(total: np.ndarray, count: int, clip_range: float, num_sites: int) -> np.ndarray:
    """The float sum of ``count`` sites' values from the exact integer sum of their ``q``."""
    lv = levels(num_sites)
    return total.astype(np.float64) * (2.0 * clip_range / lv) - count * clip_range
