"""Aggregation strategies (Flower ``Strategy`` subclasses), one rule per file named for it.

A round runs the pipeline of ``strategies/pipeline.py``: collect (``replies.py``), decode and
validate (``validation.py``), reply stages (``norm_clip.py``, central DP's clip in
``privacy.py``), fold (``weighted_mean.py`` streamed, or ``fold.py`` keeping the round for a
robust rule), aggregate stages (DP noise), the server step (the strategy's file). The rules:
``fedavg.py`` (FedAvg, FedProx), ``fedavgm.py``, ``fedopt.py`` (FedAdam, FedYogi, FedAdagrad),
``scaffold.py``, and the robust ones (``robust.py``): ``median.py``, ``trimmed_mean.py``,
``krum.py`` (Krum, Multi-Krum), ``centered_clip.py``. Shared machinery: ``base.py`` (the Flower
``Strategy``), ``sampling.py``, ``running_sum.py``, ``reply_store.py`` / ``reply_sources.py``
(a stored round), ``downlink.py`` (what goes to sites).

:data:`STRATEGIES` maps every ``strategy.name`` to its class; :func:`build_strategy` builds one
from its config sections.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from strategies.base import DeltaStrategy
from strategies.centered_clip import CenteredClip
from strategies.fedavg import FedAvg, FedProx
from strategies.fedavgm import FedAvgM
from strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from strategies.krum import Krum, MultiKrum
from strategies.median import Median
from strategies.privacy import central_dp
from strategies.replies import RoundReport, SiteReport, stream_replies
from strategies.robust import RobustStrategy
from strategies.scaffold import Scaffold
from strategies.trimmed_mean import TrimmedMean

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob

STRATEGIES: dict[str, type[DeltaStrategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedAvgM,
        Scaffold,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
        CenteredClip,
    )
}
"""Every ``strategy.name`` -> its class (the config's ``StrategyName`` lists the same names)."""


def build_strategy(
    job: FederatedJob,
    update_keys: Iterable[str] | None = None,
    num_classes: int | None = None,
    work_dir: str | Path | None = None,
) -> DeltaStrategy:
    """The strategy named by ``job.strategy.name``, built from the job's config sections.

    ``work_dir``: where rules that keep a round's replies on disk put them (the run directory).
    """
    cls = STRATEGIES[job.strategy.name]
    return cls.from_config(job, update_keys=update_keys, num_classes=num_classes, work_dir=work_dir)


__all__ = [
    "STRATEGIES",
    "CenteredClip",
    "DeltaStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "RobustStrategy",
    "RoundReport",
    "Scaffold",
    "SiteReport",
    "TrimmedMean",
    "build_strategy",
    "central_dp",
    "stream_replies",
]
