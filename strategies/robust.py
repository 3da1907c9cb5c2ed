"""The shared base of the Byzantine-robust strategies: a rule over the whole round's replies in
front of FedAvg's server step ``w + eta * aggregate``.

Each rule is a file named for it: ``median.py`` and ``trimmed_mean.py`` (Yin et al. 2018),
``krum.py`` (Krum and Multi-Krum, Blanchard et al. 2017), ``centered_clip.py`` (Karimireddy et
al. 2021). A rule reads the round through a :class:`~strategies.reply_sources.ReplySource`, one
``(K, chunk)`` block at a time, so its memory is one block plus its output whatever K; results
never depend on the chunk size, except for the last bits of float64 distance and norm sums.

How many attackers a rule tolerates comes from one setting, ``strategy.num_byzantine``
(``orchestrator/config/robust.py``, which also holds :data:`ROBUST_RULES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.config.robust import ROBUST_RULES
from strategies.base import DeltaStrategy
from strategies.fold import Rule, StoredAggregator
from strategies.pipeline import Aggregator

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob, StrategyConfig

__all__ = ["ROBUST_RULES", "RobustStrategy"]


class RobustStrategy(DeltaStrategy):
    """A robust rule (:attr:`rule`) folding a stored round, then ``w + eta * aggregate``."""

    rule_reads_round = True

    def __init__(self, *, rule: Rule | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule: Rule = rule if rule is not None else self.default_rule()

    @classmethod
    def default_rule(cls) -> Rule:
        """The rule with the default settings (``strategy.*`` at its defaults)."""
        raise NotImplementedError

    @classmethod
    def rule_from_config(cls, s: StrategyConfig) -> Rule:
        """The rule from the ``strategy`` section."""
        raise NotImplementedError

    @classmethod
    def config_kwargs(cls, job: FederatedJob) -> dict[str, Any]:
        return {**super().config_kwargs(job), "rule": cls.rule_from_config(job.strategy)}

    def make_aggregator(self, server_round: int) -> Aggregator:
        return StoredAggregator(self.fold, self.rule, self.work_dir)

    def server_step_name(self) -> str:
        return f"w + {self.eta} * robust aggregate"
