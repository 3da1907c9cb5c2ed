"""Per-site update-norm clipping on the server (``strategy.clip_update_norm``), usable with any
rule, as in DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models") and the norm bounding of Sun et al. 2019 ("Can You Really Backdoor Federated
Learning?"):

    C = clip_update_norm                          (fixed)
    C = clip_update_norm * median_k ||delta_k||   (relative: needs the whole round)
    delta_k <- delta_k * min(1, C / ||delta_k||)

The clip itself is :func:`orchestrator.contract.privacy.clip_scale` (the one definition, shared
with central and local DP). :class:`NormClipStage` clips each reply as it arrives (a fixed bound
needs no other reply); :func:`clip_update_norms` gives a stored round's scale factors, applied
while reading (``ReplyView(scales=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from orchestrator.contract.privacy import clip_scale, clip_to_norm
from strategies.pipeline import Reply

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
    """Per-site clip factors for a round's update norms (see the module doc):
    ``scale_k = clip_scale(||delta_k||, C)``, ``clipped_k = ||delta_k|| > C``, so
    ``scale_k * delta_k`` has norm ``min(||delta_k||, C)``. A zero update keeps scale 1.
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
    # A bound relative to a zero median norm sends every non-zero update to zero.
    scales = (
        np.array([clip_scale(float(x), threshold) for x in n])
        if threshold > 0
        else np.where(n > 0, 0.0, 1.0)
    )
    return NormClip(scales, n > threshold, threshold)


class NormClipStage:
    """Reply stage: scale an update to L2 norm at most ``bound`` (over all its tensors)."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.name = f"clip update L2 norm to {bound:g}"

    def __call__(self, reply: Reply, server_round: int) -> Reply:
        clipped, norm = clip_to_norm(reply.update, self.bound, reply.norm)
        if norm <= self.bound:
            return reply
        note = f"clipped: norm {norm:.3g} > {self.bound:g}"
        return replace(reply, update=clipped, note=note)
