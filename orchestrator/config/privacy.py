"""Typed ``privacy`` section of a federated job: differential privacy and secure aggregation.

See docs/privacy.md. ``mode``:

- ``off``: no clipping, no noise, no ledger (the default).
- ``central``: DP-FedAvg at the site level (McMahan et al. 2018). The server clips every reply to
  ``clip_norm`` (or an adaptive bound, Andrew et al. 2021), sums, adds Gaussian noise of std
  ``noise_multiplier x clip`` and divides by the number of sampled sites. The server is trusted
  to do this; what leaves it (models, checkpoints, exports) carries the guarantee.
- ``local``: every site clips and noises its own update before it leaves (it trusts no server).

Cross-section rules (weighting, robust rules, delta vs the population, ...) are checked in
:func:`check_privacy`, called from ``FederatedJob.__post_init__``; errors name the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from orchestrator.config.schema import FieldError, require

PrivacyMode = Literal["off", "central", "local"]
PRIVACY_MODES: tuple[str, ...] = get_args(PrivacyMode)


@dataclass
class PrivacyConfig:
    """Differential privacy (site-level) and secure aggregation (docs/privacy.md)."""

    mode: PrivacyMode = "off"
    """``off`` | ``central`` (the server clips each update and noises the sum) | ``local`` (each
    site clips and noises its own update before it leaves)."""
    clip_norm: float = 1.0
    """L2 bound C on one site's update (over all tensors). With ``adaptive_clip`` it is the
    starting bound."""
    noise_multiplier: float = 1.0
    """z: the Gaussian noise std is ``z x clip_norm`` (on the sum in ``central`` mode, on each
    update in ``local`` mode). 0 = clipping only (epsilon is infinite)."""
    adaptive_clip: bool = False
    """``central`` only: move the bound each round toward the ``target_quantile`` of the update
    norms, with the clipped-count estimate itself privatized (Andrew et al. 2021)."""
    target_quantile: float = 0.5
    """Adaptive clipping: the share of updates that should be left unclipped (gamma)."""
    clip_lr: float = 0.2
    """Adaptive clipping: geometric step eta_C of ``C <- C * exp(-eta_C (b - gamma))``."""
    clipped_count_stddev: float | None = None
    """Adaptive clipping: std sigma_b of the noise on the count of unclipped updates; ``None`` =
    sites per round / 20 (the paper's choice). Part of ``noise_multiplier`` pays for it: the
    update noise uses ``(z^-2 - (2 sigma_b)^-2)^-1/2``, so the total epsilon is that of z."""
    delta: float = 1e-5
    """delta of the (epsilon, delta) guarantee; must be < 1 / federation.num_sites."""
    target_epsilon: float | None = None
    """Privacy budget: a round that would take epsilon above it is not started; the run ends
    with its export and says why. ``None`` = no budget (epsilon is still reported)."""
    secure_aggregation: bool = False
    """SecAgg+ (Bell et al. 2020): the server learns only the sum of the sites' updates."""
    secagg_threshold: int | None = None
    """SecAgg+: shares needed to recover a dropped site's mask (Shamir threshold); ``None`` =
    a default picked from the sites per round."""
    secagg_neighbours: int | None = None
    """SecAgg+: how many other sites each site masks with and shares its secrets to (the degree
    k of Bell et al.'s graph; O(log n) keeps a site's work flat as n grows). ``None`` = all
    other sampled sites (SecAgg, Bonawitz et al. 2017)."""
    secagg_clip_range: float = 1.0
    """SecAgg+: each coordinate of an update is clipped to [-r, r] before the fixed-point
    quantization (32 bits shared by the sites of a round; step 2r x sites / 2^32)."""

    def __post_init__(self) -> None:
        require(self.mode in PRIVACY_MODES, self, "mode", " | ".join(PRIVACY_MODES))
        require(
            math.isfinite(self.clip_norm) and self.clip_norm > 0,
            self,
            "clip_norm",
            "a finite float > 0",
        )
        require(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
            self,
            "noise_multiplier",
            "a finite float >= 0 (0 = clipping only, epsilon infinite)",
        )
        require(0 < self.target_quantile < 1, self, "target_quantile", "a float in (0, 1)")
        require(0 < self.clip_lr <= 1, self, "clip_lr", "a float in (0, 1]")
        if self.clipped_count_stddev is not None:
            require(
                self.clipped_count_stddev > 0,
                self,
                "clipped_count_stddev",
                "a float > 0 or null (= sites per round / 20)",
            )
        require(0 < self.delta < 1, self, "delta", "a float in (0, 1)")
        if self.target_epsilon is not None:
            require(
                math.isfinite(self.target_epsilon) and self.target_epsilon > 0,
                self,
                "target_epsilon",
                "a finite float > 0 or null (no budget)",
            )
            require(
                self.mode != "off",
                self,
                "target_epsilon",
                "null while privacy.mode=off",
                "Set privacy.mode=central or local, or drop privacy.target_epsilon.",
            )
            require(
                self.noise_multiplier > 0,
                self,
                "target_epsilon",
                "null when privacy.noise_multiplier=0 (no noise = infinite epsilon)",
                "Set privacy.noise_multiplier > 0 (`fedray simulate --dry-run` prints the "
                "epsilon it reaches).",
            )
        if self.adaptive_clip:
            require(
                self.mode == "central",
                self,
                "adaptive_clip",
                "false unless privacy.mode=central",
                "Adaptive clipping needs the server's privatized count of unclipped updates.",
            )
        if self.secagg_threshold is not None:
            require(self.secagg_threshold >= 2, self, "secagg_threshold", "an integer >= 2 or null")
        if self.secagg_neighbours is not None:
            require(
                self.secagg_neighbours >= 2,
                self,
                "secagg_neighbours",
                "an integer >= 2 or null (all pairs)",
            )
        require(
            math.isfinite(self.secagg_clip_range) and self.secagg_clip_range > 0,
            self,
            "secagg_clip_range",
            "a finite float > 0",
        )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def count_stddev(self, sites_per_round: int) -> float:
        """sigma_b of the privatized unclipped count (adaptive clipping)."""
        if self.clipped_count_stddev is not None:
            return self.clipped_count_stddev
        return sites_per_round / 20.0


class StrategySection(Protocol):
    """What the privacy checks read of the ``strategy`` section (``StrategyConfig``)."""

    name: str
    weighting: str
    clip_update_norm: float

    @property
    def robust(self) -> bool: ...


class FederationSection(Protocol):
    """What the privacy checks read of the ``federation`` section (``FederationConfig``)."""

    num_sites: int

    @property
    def sampled_sites(self) -> int: ...


def resolve_weighting(weighting: str, p: PrivacyConfig) -> str:
    """``strategy.weighting`` with ``auto`` resolved: ``uniform`` under DP (any mode) or secure
    aggregation, whose analyses need every site to count the same, else ``examples``."""
    if weighting != "auto":
        return weighting
    return "uniform" if p.enabled or p.secure_aggregation else "examples"


def check_privacy(p: PrivacyConfig, s: StrategySection, fed: FederationSection) -> None:
    """Combinations the DP analysis does not cover are config errors naming why (called from
    ``FederatedJob.__post_init__`` with its sections)."""
    k = fed.sampled_sites
    if p.secagg_threshold is not None and p.secagg_threshold > k:
        raise FieldError(
            p,
            "secagg_threshold",
            p.secagg_threshold,
            f"<= sites per round = {k}",
            "Lower privacy.secagg_threshold or sample more sites per round.",
        )
    if p.secure_aggregation:
        check_secure_aggregation(p, s, fed)
    if not p.enabled:
        return
    if p.delta >= 1.0 / fed.num_sites:
        raise FieldError(
            p,
            "delta",
            p.delta,
            f"< 1 / federation.num_sites = {1.0 / fed.num_sites:.3g}",
            "A delta of 1/population allows leaking one whole site's data; use e.g. "
            f"{_delta_hint(fed.num_sites)}.",
        )
    if s.weighting not in ("uniform", "auto"):
        raise FieldError(
            s,
            "weighting",
            s.weighting,
            "'uniform' or 'auto' (= uniform here) with privacy.mode=" + p.mode,
            "Weighting by the num-examples a site reports makes one site's influence (and the "
            "count itself) unbounded, which the DP analysis does not cover: set "
            "strategy.weighting=auto (or uniform).",
        )
    if p.mode == "central":
        if s.robust:
            raise FieldError(
                s,
                "name",
                s.name,
                "fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad with privacy.mode=central",
                "Central DP noises a clipped *sum*; a robust rule (median, Krum, ...) is not a sum, "
                "so its sensitivity is not clip_norm. Use privacy.mode=local with robust rules.",
            )
        if s.clip_update_norm:
            raise FieldError(
                s,
                "clip_update_norm",
                s.clip_update_norm,
                "0 with privacy.mode=central",
                "privacy.clip_norm is the clip the DP analysis uses; set "
                "strategy.clip_update_norm=0.",
            )
        if p.adaptive_clip and p.noise_multiplier > 0:
            sigma_b = p.count_stddev(k)
            if 2 * sigma_b <= p.noise_multiplier:
                raise FieldError(
                    p,
                    "clipped_count_stddev",
                    sigma_b,
                    f"> noise_multiplier / 2 = {p.noise_multiplier / 2:g} (adaptive clipping "
                    "spends part of the noise on the clipped count)",
                    "Raise privacy.clipped_count_stddev (or sample more sites per round).",
                )


def check_secure_aggregation(p: PrivacyConfig, s: StrategySection, fed: FederationSection) -> None:
    """What the server needs to see one site's update for cannot run under secure aggregation."""
    k = fed.sampled_sites
    if k < 3:
        raise FieldError(
            fed,
            "sites_per_round",
            k,
            ">= 3 with privacy.secure_aggregation=true",
            "With 2 sites each one learns the other's update from the sum; sample more sites.",
        )
    if s.robust:
        raise FieldError(
            s,
            "name",
            s.name,
            "fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad with secure aggregation",
            "A robust rule needs every site's update; the server sees only their sum.",
        )
    if s.weighting not in ("uniform", "auto"):
        raise FieldError(
            s,
            "weighting",
            s.weighting,
            "'uniform' or 'auto' (= uniform here) with privacy.secure_aggregation=true",
            "The server sums masked updates it cannot weight: set strategy.weighting=auto "
            "(or uniform).",
        )
    if s.clip_update_norm:
        raise FieldError(
            s,
            "clip_update_norm",
            s.clip_update_norm,
            "0 with privacy.secure_aggregation=true",
            "The server cannot clip what it cannot see: use privacy.mode=central with "
            "privacy.clip_norm (the sites clip, and add their share of the noise).",
        )
    if p.adaptive_clip:
        raise FieldError(
            p,
            "adaptive_clip",
            True,
            "false with privacy.secure_aggregation=true",
            "Adaptive clipping needs each site's clipped/unclipped bit at the server; under "
            "secure aggregation use a fixed privacy.clip_norm.",
        )
    group = min(p.secagg_neighbours or k - 1, k - 1) + 1  # a site's share holders
    t = p.secagg_threshold
    if t is not None and not group // 2 + 1 <= t <= group:
        raise FieldError(
            p,
            "secagg_threshold",
            t,
            f"in [{group // 2 + 1}, {group}] (a majority of a site's {group} share holders: "
            "itself and its neighbours)",
            "Fewer lets a minority rebuild a site's secrets; more than the holders can never "
            "recover a dropped site.",
        )


def _delta_hint(n: int) -> str:
    return f"{10.0 ** math.floor(math.log10(1.0 / n) - 1):g}"
