"""Differential privacy math (pure functions) and the server stages of central DP.

Central DP is DP-FedAvg at the site level (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models"), with optional adaptive clipping (Andrew et al. 2021, "Differentially
Private Learning with Adaptive Clipping"):

    reply stage      delta_k <- delta_k * min(1, C / ||delta_k||)           (:func:`clip_to_norm`)
    fold             S = sum_k delta_k                                      (uniform weights)
    aggregate stage  S <- S + N(0, (z_delta C)^2 I);  mean = S / K_sampled  (:func:`add_gaussian`)
    adaptive clip    C <- C exp(-eta_C (b~ - gamma)), b~ = (#unclipped + N(0, sigma_b^2)) / K

The mean divides by the number of *sampled* sites, not by the accepted replies: a site that is
rejected or drops out counts as a zero update (norm 0 <= C), which the analysis covers; dividing
by a data-dependent count would not be. With adaptive clipping, z_delta =
(z^-2 - (2 sigma_b)^-2)^-1/2 (:func:`update_noise_multiplier`), so the pair (noised sum, noised
count) costs exactly the epsilon of noise multiplier z (Andrew et al., Theorem 1).

Local DP and distributed DP (secure aggregation: each site adds its share of the noise) use
:func:`privatize_update` / :func:`noise_share_std` at the site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.contract.privacy import (  # noqa: F401  (the site-side math, re-exported)
    add_gaussian,
    clip_to_norm,
    noise_share_std,
    privatize_update,
    secure_rng,
)
from strategies.pipeline import Aggregate, Reply

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would take epsilon above ``privacy.target_epsilon``: it is not started."""


# ---- pure math -------------------------------------------------------------------------------


def update_noise_multiplier(z: float, count_stddev: float | None) -> float:
    """Noise multiplier of the update sum: z itself, or with adaptive clipping the part of z
    left after the privatized count takes its share, ``(z^-2 - (2 sigma_b)^-2)^-1/2``."""
    if count_stddev is None or z == 0:
        return z
    rest = z**-2 - (2.0 * count_stddev) ** -2
    if rest <= 0:
        raise ValueError(
            f"clipped-count stddev {count_stddev} leaves no noise for the update (needs "
            f"2 sigma_b > z = {z})"
        )
    return rest**-0.5


def next_clip(
    clip: float,
    unclipped: int,
    expected_sites: int,
    count_stddev: float,
    target_quantile: float,
    lr: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Andrew et al. 2021's geometric update from the privatized unclipped fraction:
    ``b~ = (unclipped + N(0, sigma_b^2)) / K``; ``C <- C exp(-lr (b~ - gamma))``.
    Returns ``(new clip, b~)``."""
    b = (unclipped + rng.normal(0.0, count_stddev)) / expected_sites
    return clip * math.exp(-lr * (b - target_quantile)), b


# ---- the server stages of central DP ---------------------------------------------------------


def clip_shrink_hint(clip: float, norms: Sequence[float], eta: float) -> str | None:
    """A hint when the DP clip shortened most of a round's updates, else None.

    Clipped updates average to a step about ``clip / median norm`` as long as the unclipped one:
    plain averaging (fedavg, fedprox, fedavgm) then learns that much slower, which is a bias of
    the clip, not DP noise (BENCHMARKS.md, "Privacy": it cost more than the noise at epsilon 8).
    Scaling the server step (or the clip) back up restores the step size and scales the noise
    with it: the noise-to-signal ratio of the step is unchanged.
    """
    if not norms:
        return None
    med = float(np.median(norms))
    if med <= 1.25 * clip:
        return None
    clipped = sum(n > clip for n in norms)
    return (
        f"central DP clipped {clipped} of {len(norms)} updates (median norm {med:.3g} > "
        f"privacy.clip_norm={clip:.3g}): the averaged step is ~{clip / med:.2f}x the unclipped "
        f"one. Raise strategy.server_lr toward {eta * med / clip:.2g}, or privacy.clip_norm "
        f"toward {med:.2g}: either restores the step, and the noise grows with it, so the "
        "noise-to-signal ratio stays the same (or use fedadam, whose step is scale-free)."
    )


class CentralDP:
    """Round state of central DP shared by its two stages (:attr:`clip_stage`,
    :attr:`noise_stage`): the current clip, the round's sampled count and unclipped count.

    ``rng``: the noise source; default :func:`secure_rng` (tests inject a seeded one). It is not
    checkpointed on purpose: whoever holds the noise can remove it. A resumed run continues the
    ledger and the adaptive clip exactly, with fresh noise.
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_sites: int,
        *,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        count_stddev: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.clip = clip_norm
        self.z = noise_multiplier
        self.expected_sites = expected_sites
        self.adaptive = adaptive
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.count_stddev = count_stddev if adaptive else None
        self.z_update = update_noise_multiplier(noise_multiplier, self.count_stddev)
        self.rng = rng or secure_rng()
        self.sampled = expected_sites
        self.unclipped = self.clipped = 0
        self.round_clip = clip_norm
        self.clip_stage = _ClipStage(self)
        self.noise_stage = _NoiseStage(self)

    def begin_round(self, sampled: int) -> None:
        self.sampled = max(1, sampled)
        self.unclipped = self.clipped = 0
        self.round_clip = self.clip

    def finish_round(self) -> float | None:
        """After the noise: the adaptive clip's update (returns the noised unclipped fraction)."""
        if not self.adaptive:
            return None
        assert self.count_stddev is not None
        self.clip, b = next_clip(
            self.clip,
            self.unclipped,
            self.sampled,
            self.count_stddev,
            self.target_quantile,
            self.clip_lr,
            self.rng,
        )
        return b

    def round_columns(self) -> dict[str, Any]:
        """For the round record (server-side diagnostics, not privatized, like the per-site
        norms): the bound this round clipped to and how many accepted updates exceeded it."""
        return {"clip": self.round_clip, "clipped": self.clipped}

    def state_meta(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def load_state(self, meta: Mapping[str, Any]) -> None:
        clip = float(meta["clip"])
        if not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"checkpoint holds an invalid DP clip {clip!r}")
        self.clip = clip

    def describe(self) -> list[str]:
        clip = (
            f"adaptive clip (start {self.clip:g}, quantile {self.target_quantile:g}, "
            f"lr {self.clip_lr:g}, count noise {self.count_stddev:g})"
            if self.adaptive
            else f"clip {self.clip:g}"
        )
        return [
            f"central DP: {clip}",
            f"central DP: sum + N(0, ({self.z_update:.4g} x clip)^2), mean over sampled sites",
        ]


class _ClipStage:
    """Reply stage: clip to the round's bound (and count the unclipped, for adaptive clip)."""

    def __init__(self, dp: CentralDP) -> None:
        self.dp = dp

    @property
    def name(self) -> str:
        return self.dp.describe()[0]

    def __call__(self, reply: Reply, server_round: int) -> Reply:
        clipped, norm = clip_to_norm(reply.update, self.dp.clip, reply.norm)
        if norm <= self.dp.clip:
            self.dp.unclipped += 1
            return reply
        self.dp.clipped += 1
        note = f"dp-clipped: norm {norm:.3g} > {self.dp.clip:.3g}"
        return replace(reply, update=clipped, note=note)


class _NoiseStage:
    """Aggregate stage: Gaussian noise on the sum, mean over the sampled sites."""

    def __init__(self, dp: CentralDP) -> None:
        self.dp = dp

    @property
    def name(self) -> str:
        return self.dp.describe()[1]

    def __call__(self, agg: Aggregate, server_round: int) -> Aggregate:
        acc = self.dp.sampled
        folded = agg.folded
        # The running sum holds sum_k delta_k (uniform weights, float64 by default).
        add_gaussian(folded.sums, self.dp.z_update * self.dp.clip, self.dp.rng)
        folded.total_weight = float(acc)
        self.dp.finish_round()
        return agg


def central_dp(job: FederatedJob) -> CentralDP | None:
    """The server's central-DP stages for ``job`` (None unless ``privacy.mode=central``)."""
    p, k = job.privacy, job.federation.sampled_sites
    if p.mode != "central" or p.secure_aggregation:
        return None  # under secure aggregation the sites clip and noise (distributed DP)
    return CentralDP(
        p.clip_norm,
        p.noise_multiplier,
        k,
        adaptive=p.adaptive_clip,
        target_quantile=p.target_quantile,
        clip_lr=p.clip_lr,
        count_stddev=p.count_stddev(k),
    )
