"""The privacy ledger: what each round spent, and the epsilon it adds up to.

Accountant: Google's ``dp-accounting`` RDP accountant (``dp_accounting.rdp``). Why this one:
it accounts the sampling fedray actually does, a fixed number of sites drawn uniformly *without
replacement* from the connected population (``SampledWithoutReplacementDpEvent``, Wang, Balle &
Kasiviswanathan 2019), which Opacus' accountants (Poisson sampling only) do not; and it composes
events of different sampling rates (sites drop out and rejoin), which the ledger needs.

Neighbouring relation and sensitivity. Fixed-size sampling fixes the population size, so the
relation is *replace one site* (``REPLACE_ONE``). Replacing one site's clipped update changes the
sum by up to ``2 C``; noise of std ``z C`` is therefore a Gaussian mechanism of noise multiplier
``z / 2`` at sensitivity 1, and that is what the accountant is fed. (With adaptive clipping the
noised count of unclipped updates has sensitivity 1 and std sigma_b; together with the update
noise of multiplier z_delta, ``4/z_delta^2 + 1/sigma_b^2 = 4/z^2``: again ``z / 2``.)

- ``central``: one ``SampledWithoutReplacement(N, K, Gaussian(z/2))`` event per round, N the
  sites the round sampled from (the connected population), K the sites sampled. Amplification
  by subsampling applies because the sample is drawn from OS entropy the adversary cannot see.
- ``local``: each site's release is a ``Gaussian(z/2)`` per round it took part in, with no
  amplification (the server knows who was sampled). The ledger counts every site's rounds and
  reports the worst site's epsilon.

The ledger is a list of rounds (JSON, in every checkpoint); epsilon is recomputed from it, so a
resumed run continues it exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from orchestrator.config.privacy import PrivacyConfig
from strategies.privacy import PrivacyBudgetExhausted

if TYPE_CHECKING:
    import dp_accounting
    from dp_accounting import dp_event

# dp_accounting is imported where an epsilon is computed: importing it pulls in scipy.stats
# (~1.5 s), which every server process (rounds.py imports this module) paid even without DP.


def _accountant() -> dp_accounting.rdp.RdpAccountant:
    import dp_accounting

    return dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )


def round_event(z: float, sampled: int, population: int) -> dp_event.DpEvent:
    """One central-DP round: K of N sites without replacement, Gaussian of multiplier z/2."""
    from dp_accounting import dp_event

    if not 1 <= sampled <= population:
        raise ValueError(f"need 1 <= sampled ({sampled}) <= population ({population})")
    gauss = dp_event.GaussianDpEvent(z / 2.0)
    if sampled == population:  # everyone takes part: no amplification
        return gauss
    return dp_event.SampledWithoutReplacementDpEvent(population, sampled, gauss)


def central_epsilon(z: float, rounds: Iterable[tuple[int, int]], delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` of ``(sampled, population)``.

    The without-replacement amplification bound is loose at small z (it can exceed the bound
    without sampling), and both bound the same mechanism, so the smaller epsilon is reported.
    """
    counts = Counter(rounds)
    if not counts:
        return 0.0
    if z == 0:
        return math.inf
    return _central_epsilon(z, frozenset(counts.items()), delta)


@lru_cache(maxsize=256)
def _central_epsilon(
    z: float, counts: frozenset[tuple[tuple[int, int], int]], delta: float
) -> float:
    # Cached: the without-replacement RDP takes ~0.5 s per distinct (K, N), and a round asks
    # for the same composition twice (the budget check, then the round record).
    from dp_accounting import dp_event

    sampled, plain = _accountant(), _accountant()
    for (k, n), times in sorted(counts):
        sampled.compose(round_event(z, k, n), times)
    plain.compose(dp_event.GaussianDpEvent(z / 2.0), sum(times for _, times in counts))
    return float(min(sampled.get_epsilon(delta), plain.get_epsilon(delta)))


def local_epsilon(z: float, participations: int, delta: float) -> float:
    """One site's epsilon at ``delta`` after taking part in ``participations`` rounds."""
    if participations == 0:
        return 0.0
    if z == 0:
        return math.inf
    from dp_accounting import dp_event

    acc = _accountant()
    acc.compose(dp_event.GaussianDpEvent(z / 2.0), participations)
    return float(acc.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """Rounds spent so far and the epsilon they add up to (see the module docstring)."""

    mode: str
    noise_multiplier: float
    delta: float
    target_epsilon: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """One entry per started round: ``round``, ``sampled``, ``population`` (and, local mode,
    ``sites``: the sites whose update left them)."""

    @classmethod
    def for_job(cls, cfg: PrivacyConfig) -> PrivacyLedger:
        return cls(cfg.mode, cfg.noise_multiplier, cfg.delta, cfg.target_epsilon)

    # ---- epsilon ----------------------------------------------------------------------------

    def _participations(self, extra: Iterable[str] = ()) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in self.rounds:
            c.update(r.get("sites", []))
        c.update(extra)
        return c

    def epsilon(self) -> float:
        """Epsilon at ``delta`` of everything recorded (local: the worst site's)."""
        return self._epsilon(self.rounds)

    def _epsilon(self, rounds: list[dict[str, Any]], extra_sites: int = 0) -> float:
        if self.mode == "central":
            pairs = [(int(r["sampled"]), int(r["population"])) for r in rounds]
            return central_epsilon(self.noise_multiplier, pairs, self.delta)
        worst = max(self._participations().values(), default=0)
        return local_epsilon(self.noise_multiplier, worst + extra_sites, self.delta)

    def epsilon_after(self, sampled: int, population: int) -> float:
        """Epsilon if one more round of ``sampled`` of ``population`` sites ran (local: the
        worst site taking part once more)."""
        nxt = {"round": -1, "sampled": sampled, "population": population}
        return self._epsilon([*self.rounds, nxt], extra_sites=1)

    def round_epsilon(self) -> float:
        """Epsilon of one round on its own (local: one participation; central: the last
        round's sampling)."""
        if self.mode == "local":
            return local_epsilon(self.noise_multiplier, 1, self.delta)
        if not self.rounds:
            return 0.0
        last = self.rounds[-1]
        return central_epsilon(
            self.noise_multiplier, [(last["sampled"], last["population"])], self.delta
        )

    # ---- the round loop's hooks ------------------------------------------------------------

    def admit(self, server_round: int, sampled: int, population: int) -> None:
        """Raise :class:`PrivacyBudgetExhausted` when the round would exceed the budget."""
        if self.target_epsilon is None:
            return
        eps = self.epsilon_after(sampled, population)
        if eps > self.target_epsilon:
            raise PrivacyBudgetExhausted(
                f"round {server_round} would take epsilon from {self.epsilon():.4g} to "
                f"{eps:.4g} > privacy.target_epsilon={self.target_epsilon:g} "
                f"(delta={self.delta:g}); it was not started"
            )

    def record(
        self, server_round: int, sampled: int, population: int, sites: Iterable[str] = ()
    ) -> None:
        entry: dict[str, Any] = {
            "round": server_round,
            "sampled": sampled,
            "population": population,
        }
        if self.mode == "local":
            entry["sites"] = sorted(sites)
        self.rounds.append(entry)

    def columns(self) -> dict[str, Any]:
        """The round record's privacy keys: ``epsilon`` (cumulative) and ``privacy``."""
        eps = self.epsilon()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "privacy": {
                "mode": self.mode,
                "delta": self.delta,
                "noise_multiplier": self.noise_multiplier,
                "round_epsilon": self.round_epsilon(),
                "rounds_charged": len(self.rounds),
            },
        }

    # ---- checkpoint -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "rounds": self.rounds,
        }

    def load(self, saved: Mapping[str, Any]) -> None:
        """Continue a checkpointed ledger (same mode / noise / delta, or a clear error)."""
        for key in ("mode", "noise_multiplier", "delta"):
            if saved.get(key) != getattr(self, key):
                raise ValueError(
                    f"checkpoint's privacy ledger has {key}={saved.get(key)!r}, the job has "
                    f"{getattr(self, key)!r}"
                )
        rounds = saved.get("rounds")
        if not isinstance(rounds, list) or not all(
            isinstance(r, dict) and {"round", "sampled", "population"} <= set(r) for r in rounds
        ):
            raise ValueError("checkpoint's privacy ledger is malformed (rounds)")
        self.rounds = [dict(r) for r in rounds]


def projected_epsilon(cfg: PrivacyConfig, num_rounds: int, sampled: int, population: int) -> float:
    """The epsilon a run of ``num_rounds`` full rounds reaches (``--dry-run``); local mode
    assumes the worst site takes part in every round."""
    if cfg.mode == "central":
        return central_epsilon(
            cfg.noise_multiplier, [(sampled, population)] * num_rounds, cfg.delta
        )
    return local_epsilon(cfg.noise_multiplier, num_rounds, cfg.delta)


def rounds_within_budget(cfg: PrivacyConfig, num_rounds: int, sampled: int, population: int) -> int:
    """How many of ``num_rounds`` fit in ``target_epsilon`` (all of them without a budget)."""
    if cfg.target_epsilon is None:
        return num_rounds
    lo, hi = 0, num_rounds  # epsilon grows with rounds: bisect the last round that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if projected_epsilon(cfg, mid, sampled, population) <= cfg.target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo
