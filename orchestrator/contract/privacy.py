"""Differential-privacy math both sides run: clip an update to a norm, add Gaussian noise.

The server's central-DP stages (``strategies/privacy.py``) and the sites' local / distributed DP
(``clients/privacy.py``, ``orchestrator/secagg/dp.py``) share these functions, so this module
lives in the contract and imports neither side.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numpy only at run time: secagg/dp.py (no Flower) clips with it too
    from orchestrator.contract.arrays import Arrays

_CHUNK = 1 << 20


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """``||delta||_2`` over all tensors of one update, accumulated in float64.

    ``einsum(..., dtype=float64)`` casts in small buffers (no model-sized temporary) and does not
    go through BLAS: with torch loaded, OpenBLAS's threaded float64 dot (and the float64 copy it
    needs) took 10-57 ms per 0.67M-float update on the 2-core machine, every reply of every
    central-DP round; this takes ~2 ms.
    """
    total = 0.0
    for a in update.values():
        flat = np.asarray(a).reshape(-1)
        total += float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return math.sqrt(total)


def clip_scale(norm: float, bound: float) -> float:
    """The factor that clips an update of L2 norm ``norm`` to ``bound``: ``min(1, bound / norm)``
    (a zero update keeps 1). The one clip rule: :func:`clip_to_norm` applies it to the arrays,
    the server's norm clip (``strategies/norm_clip.py``) to a round's norms."""
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"clip bound must be a finite float > 0, got {bound}")
    if not (norm >= 0 and math.isfinite(norm)):
        raise ValueError(f"update norm must be finite and >= 0, got {norm}")
    return 1.0 if norm <= bound else bound / norm


def clip_to_norm(
    update: Mapping[str, np.ndarray], bound: float, norm: float | None = None
) -> tuple[Arrays, float]:
    """``(update scaled to L2 norm <= bound, its norm before clipping)``: ``update *``
    :func:`clip_scale`. ``norm``: the update's :func:`update_norm` when the caller has it.

    The bound holds *exactly* for the returned arrays (their norm is recomputed in float64):
    rounding ``update * (bound / norm)`` to float32 can land a hair above ``bound``, and a DP
    sensitivity bound that is off by one ulp is not a bound, so the scale shrinks until it holds.
    """
    norm = update_norm(update) if norm is None else norm
    if not math.isfinite(norm):
        raise ValueError("update has a non-finite norm")
    scale = clip_scale(norm, bound)
    if scale == 1.0:
        return dict(update), norm
    while True:
        out = {k: np.multiply(v, v.dtype.type(scale)) for k, v in update.items()}
        if update_norm(out) <= bound:
            return out, norm
        scale *= 1.0 - 1e-6


def add_gaussian(arrays: Arrays, std: float, rng: np.random.Generator) -> None:
    """``arrays += N(0, std^2)`` in place, one chunk at a time (no model-sized temporary)."""
    if std == 0:
        return
    for a in arrays.values():
        flat = a.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            seg = flat[start : start + _CHUNK]
            seg += rng.normal(0.0, std, seg.size).astype(seg.dtype, copy=False)


def noise_share_std(z: float, clip: float, num_sites: int) -> float:
    """Distributed DP: the std one site adds so that ``num_sites`` shares sum to ``z * clip``."""
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    return z * clip / math.sqrt(num_sites)


def privatize_update(
    update: Mapping[str, np.ndarray],
    clip: float,
    std: float,
    rng: np.random.Generator,
) -> tuple[Arrays, float]:
    """Clip to ``clip`` then add N(0, std^2) to every coordinate (the site's side of local DP
    with ``std = z * clip``, or of distributed DP with ``std = noise_share_std(...)``).
    Returns ``(private update, norm before clipping)``; the input is not modified."""
    clipped, norm = clip_to_norm(update, clip)
    out = {k: np.array(v, dtype=np.result_type(v.dtype, np.float32)) for k, v in clipped.items()}
    add_gaussian(out, std, rng)
    return out, norm


def secure_rng() -> np.random.Generator:
    """A generator seeded from the OS's entropy: DP noise nobody can predict or replay."""
    return np.random.default_rng(secrets.randbits(128))
