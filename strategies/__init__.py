"""Aggregation strategies (Flower ``Strategy`` subclasses) whose math lives in ``strategies.math``.

Sites send weight updates; a round runs the pipeline of ``strategies.pipeline`` (decode and
validate each reply with ``strategies.validation``, fold, server step).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from strategies.aggregators import RuleConfig
from strategies.base import DeltaStrategy
from strategies.fedavg import FedAvg, FedProx
from strategies.fedavgm import FedAvgM
from strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from strategies.privacy import CentralDP
from strategies.replies import RoundReport, SiteReport, stream_replies
from strategies.robust_strategy import RobustStrategy
from strategies.scaffold import Scaffold

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob

log = logging.getLogger(__name__)

ROBUST = ("median", "trimmed_mean", "krum", "multikrum", "centered_clip")

STRATEGIES: dict[str, type[DeltaStrategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "scaffold": Scaffold,
}


def build_strategy(
    job: FederatedJob,
    update_keys: Iterable[str] | None = None,
    num_classes: int | None = None,
    work_dir: str | Path | None = None,
) -> DeltaStrategy:
    """The strategy named by ``job.strategy`` with the federation's sampling settings.

    ``work_dir``: where rules that keep a round's replies on disk put them (the run directory).
    """
    s, f, p = job.strategy, job.federation, job.privacy
    rule = RuleConfig(
        rule=s.name if s.name in ROBUST else "mean",
        weighting=s.weighting,
        weight_cap=s.weight_cap,
        clip_update_norm=s.clip_update_norm,
        clip_relative=s.clip_relative,
        trim_fraction=s.trim_fraction,
        num_byzantine=s.num_byzantine,
        num_selected=s.num_selected,
        clip_radius=s.clip_radius,
        clip_iters=s.clip_iters,
    )
    common = dict(
        eta=s.eta,
        sites_per_round=f.sites_per_round,
        fraction=f.fraction,
        min_sites=f.min_sites,
        min_available_sites=f.sampled_sites,
        update_keys=update_keys,
        # Under DP the sample must be secret (amplification by sampling assumes nobody can
        # predict it), so it is drawn from OS entropy; the checkpoint keeps the RNG for resume.
        seed=secrets.randbits(64) if p.enabled else f.seed,
        wait_for_sites_s=f.round_timeout_s,
        rejoin_wait_s=f.rejoin_wait_s,
        accumulate=s.accumulate,
        num_classes=num_classes,
        rule=rule,
        work_dir=work_dir,
        central_dp=central_dp(job),
        compression=job.compression,
        base_once=job.finetune.mode == "lora" and job.compression.lora_base_once,
    )
    if s.name in ROBUST:
        return RobustStrategy(name=s.name, **common)
    if s.name == "fedprox":
        if s.proximal_mu == 0:
            log.warning("strategy.proximal_mu=0: FedProx without its proximal term is FedAvg")
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if s.name in ("fedadam", "fedyogi", "fedadagrad"):
        return STRATEGIES[s.name](beta1=s.beta1, beta2=s.beta2, tau=s.tau, **common)
    if s.name == "fedavgm":
        return FedAvgM(server_momentum=s.server_momentum, **common)
    if s.name == "scaffold":
        return Scaffold(**common)
    return FedAvg(**common)


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


__all__ = [
    "STRATEGIES",
    "DeltaStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "RobustStrategy",
    "RoundReport",
    "Scaffold",
    "SiteReport",
    "build_strategy",
    "stream_replies",
]
