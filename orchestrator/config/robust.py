"""How many attackers a robust rule tolerates, from one setting: ``strategy.num_byzantine``.

``num_byzantine`` is a *count*: the attackers (Byzantine sites) the configured rule must tolerate
among the ``K = federation.sampled_sites`` sites sampled each round. A count, not a fraction,
because that is what every rule's guarantee is stated in (Krum needs ``K > 2f + 2``, a trimmed
mean that drops ``b`` values per side tolerates ``f <= b``), and a fraction has to be rounded:
``0.2 x 8`` sites rounded down to 1 trimmed one value per side and let the second attacker in.

Each rule's tolerance is derived from it:

- ``median``: an honest majority, ``f <= (K - 1) // 2`` (any minority moves the median only
  within the honest values' range);
- ``trimmed_mean``: drops ``b = f`` values per side of every coordinate (``strategy.trim_fraction``
  may ask for more: ``b = floor(trim_fraction x K) >= f``); needs ``K > 2b``;
- ``krum`` / ``multikrum``: ``f`` itself (Blanchard et al. 2017); needs ``K > 2f + 2``;
- ``centered_clip``: an honest majority, ``f <= (K - 1) // 2`` (each attacker moves the center
  by at most ``clip_radius / K`` per iteration);
- every weighted mean (fedavg, fedprox, fedavgm, the adaptive optimizers, scaffold): 0.

A rule that tolerates fewer than declared, or a declaration the sampled sites cannot meet, is a
config error (:func:`check_tolerance`), raised before anything starts.
"""

from __future__ import annotations

import math
from typing import Protocol

from orchestrator.config.schema import FieldError

ROBUST_RULES: tuple[str, ...] = ("median", "trimmed_mean", "krum", "multikrum", "centered_clip")
"""The Byzantine-robust aggregation rules (the one list: config validation, the strategy
registry and the docs read it)."""

DEFAULT_BYZANTINE = 1
"""``strategy.num_byzantine=null`` with a robust rule: tolerate one attacker."""


class RobustSection(Protocol):
    """What the tolerance checks read of the ``strategy`` section (``StrategyConfig``)."""

    name: str
    num_byzantine: int | None
    trim_fraction: float | None
    num_selected: int | None


def declared_byzantine(s: RobustSection) -> int:
    """The attackers ``s`` must tolerate: ``num_byzantine``, or when null 1 with a robust rule
    and 0 with a weighted mean."""
    if s.num_byzantine is not None:
        return s.num_byzantine
    return DEFAULT_BYZANTINE if s.name in ROBUST_RULES else 0


def trim_per_side(k: int, f: int, trim_fraction: float | None) -> int:
    """Values a trimmed mean of ``k`` replies drops at each end of a coordinate: ``f``, or
    ``floor(trim_fraction x k)`` when set (validated to be >= f), at most ``(k - 1) // 2`` (never
    everything). A tolerance of 1e-9 absorbs binary rounding (0.29 x 100 is 28.999999999999996)."""
    b = f if trim_fraction is None else math.floor(trim_fraction * k + 1e-9)
    return max(0, min(b, (k - 1) // 2))


def tolerated(s: RobustSection, k: int) -> int:
    """How many attackers among ``k`` sampled sites the rule configured in ``s`` tolerates."""
    f = declared_byzantine(s)
    if s.name in ("median", "centered_clip"):
        return (k - 1) // 2
    if s.name == "trimmed_mean":
        return trim_per_side(k, f, s.trim_fraction)
    if s.name in ("krum", "multikrum"):
        return f if k > 2 * f + 2 else 0
    return 0


def check_tolerance(s: RobustSection, k: int) -> None:
    """Refuse a rule that tolerates fewer attackers than ``strategy.num_byzantine`` declares of
    ``k`` sampled sites, with the key, the value, what is allowed and how to fix it."""
    f = declared_byzantine(s)
    if s.name not in ROBUST_RULES:
        if f > 0:
            raise FieldError(
                s,
                "num_byzantine",
                s.num_byzantine,
                f"0 or null with strategy.name={s.name} (a weighted mean tolerates no attacker: "
                "one site's update moves it without bound)",
                "Choose a robust rule (strategy.name=" + " | ".join(ROBUST_RULES) + ").",
            )
        return
    if s.name == "trimmed_mean" and s.trim_fraction is not None and s.trim_fraction * k + 1e-9 < f:
        raise FieldError(
            s,
            "trim_fraction",
            s.trim_fraction,
            f">= num_byzantine / sites per round = {f}/{k} = {f / k:.3g} (floor(trim_fraction x "
            f"{k}) values dropped per side must cover the {f} declared attacker(s)), or null",
            "Set strategy.trim_fraction=null to trim num_byzantine values per side.",
        )
    _check_sites(s, f, k)
    if s.name == "multikrum" and s.num_selected is not None and s.num_selected > k - f:
        raise FieldError(
            s,
            "num_selected",
            s.num_selected,
            f"<= sites per round - num_byzantine = {k} - {f} = {k - f} (more would always "
            "average in an attacker when there are f of them), or null",
            "Lower strategy.num_selected.",
        )


def _check_sites(s: RobustSection, f: int, k: int) -> None:
    """``f`` attackers of ``k`` sampled sites must be within the rule's reach."""
    if s.name in ("krum", "multikrum"):
        need, most = 2 * f + 3, max((k - 3) // 2, 0)
        rule = f"{s.name} needs sites per round > 2 x num_byzantine + 2"
    else:
        need, most = 2 * f + 1, (k - 1) // 2
        rule = f"{s.name} needs an honest majority: sites per round > 2 x num_byzantine"
    if k >= need:
        return
    default = " (null means 1 with a robust rule)" if s.num_byzantine is None else ""
    raise FieldError(
        s,
        "num_byzantine",
        s.num_byzantine,
        f"<= {most} with {k} sites per round{default} ({rule}: {k} sampled sites tolerate at "
        f"most {most} attacker(s))",
        f"Sample at least {need} sites per round (federation.sites_per_round / fraction) or "
        f"lower strategy.num_byzantine to {most}.",
    )


def describe_tolerance(s: RobustSection, k: int) -> str:
    """What the configured rule tolerates of ``k`` sampled sites, for ``--dry-run``."""
    f, t = declared_byzantine(s), tolerated(s, k)
    if s.name in ("median", "centered_clip"):
        how = "an honest majority"
        if s.name == "centered_clip":
            how += "; each attacker moves the center at most clip_radius / K per iteration"
    elif s.name == "trimmed_mean":
        how = f"drops {t} value(s) per side of every coordinate"
    elif s.name in ("krum", "multikrum"):
        how = f"Krum scores with f={f} (needs K > 2f + 2)"
    else:
        how = "a weighted mean: one site's update moves it without bound"
    return (
        f"tolerates {t} attacker(s) of {k} sampled sites, {f} declared "
        f"(strategy.num_byzantine): {how}"
    )
