"""A site's reply pipeline: train -> update -> (clip / noise) -> (compress) -> (mask) -> reply.

Local training and the update (``w_local - w_received``) are fixed; what happens to the update
before it leaves the site is a list of :class:`UpdateStage` chosen by the task
(:func:`update_stages`). A feature (differential privacy, compression, secure-aggregation masks,
simulated attacks) adds one stage class and one branch in :func:`update_stages`; the ClientApp
does not change. ``--dry-run`` lists the stages (:func:`describe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clients.attacks import attack_update
from clients.compression import CompressStage
from clients.site_state import simulated_site
from clients.stages import Arrays, SiteContext, UpdateStage
from orchestrator.contract.attackers import select_attackers
from orchestrator.contract.task import SiteTask

__all__ = ["Arrays", "SiteContext", "UpdateStage", "describe", "run_stages", "update_stages"]


def attackers(task: SiteTask, num_sites: int) -> list[int]:
    """The simulated site ids that attack (reproducible from the federation seed)."""
    a = task.attack
    if a.kind == "none":
        return []
    return select_attackers(num_sites, a.fraction, a.sites or None, task.partition_seed)


def is_attacker(task: SiteTask, node_config: Mapping[str, Any]) -> bool:
    """Whether this site attacks. A real site refuses a task that asks for attacks."""
    if task.attack.kind == "none":
        return False
    sim = simulated_site(node_config)
    if sim is None:
        raise ValueError(
            f"the server asked this site to simulate an attack (attack.kind={task.attack.kind}); "
            "attacks exist for simulation only and a real site never runs one"
        )
    return sim[0] in attackers(task, sim[1])


class AttackStage:
    """A malicious simulated site: replaces its honest update (``clients/attacks.py``).

    ALIE and IPM need the honest updates' statistics. Colluding attackers know their own honest
    updates, so each computes every colluder's (the same seeded training the colluder runs) and
    uses their mean / std; no attacker sees an honest site's data or update.
    """

    def __init__(self, task: SiteTask) -> None:
        self.task = task
        a = task.attack
        self.name = f"attack: {a.kind} (scale={a.scale}; the attacking simulated sites only)"

    def __call__(self, update: Arrays, ctx: SiteContext) -> Arrays:
        a = self.task.attack
        pid, num = simulated_site(ctx.node_config) or (0, 1)
        colluders = attackers(self.task, num)
        benign = None
        if a.kind in ("alie", "ipm") and ctx.honest_update_of is not None:
            benign = [update if i == pid else ctx.honest_update_of(i) for i in colluders]
        rng = np.random.default_rng([self.task.partition_seed, self.task.server_round, pid])
        return attack_update(
            a.kind,
            update,
            scale=a.scale,
            rng=rng,
            benign=benign,
            num_sites=num,
            num_attackers=len(colluders),
        )


def update_stages(task: SiteTask, node_config: Mapping[str, Any]) -> list[UpdateStage]:
    """The stages ``task`` asks for at this site, in pipeline order (none: the update leaves
    as computed)."""
    stages: list[UpdateStage] = []
    if is_attacker(task, node_config) and task.attack.kind != "label_flip":
        stages.append(AttackStage(task))
    if task.privacy.mode == "local":
        from clients.privacy import LocalDPStage  # imports this module

        stages.append(LocalDPStage(task))
    if task.compression.kind != "none":  # last: what it returns is what goes on the wire
        stages.append(CompressStage(task.compression, task.train.seed, task.server_round))
    return stages


def run_stages(stages: Sequence[UpdateStage], update: Arrays, ctx: SiteContext) -> Arrays:
    for stage in stages:
        update = stage(update, ctx)
    return update


def describe(task: SiteTask) -> list[str]:
    """The site pipeline as text, for ``--dry-run``."""
    steps = f"{task.local_steps} step(s)" if task.local_steps else f"{task.local_epochs} epoch(s)"
    head = [
        f"train: AdamW lr={task.train.lr} batch={task.train.micro_batch_size}, {steps}"
        + (f", FedProx mu={task.proximal_mu}" if task.proximal_mu else "")
        + (", SCAFFOLD: each step corrected by -lr (c - c_i)" if task.scaffold else ""),
        "update: w_local - w_received (trainable tensors)",
    ]
    if task.scaffold:
        head.append(
            "site state: c_i <- c_i - c - update / (K lr); reply delta_c (clients/scaffold.py)"
        )
    stages = [AttackStage(task).name] if task.attack.kind != "none" else []
    p = task.privacy
    if p.mode == "local":
        from clients.privacy import LocalDPStage

        stages.append(LocalDPStage(task).name)
    if task.compression.kind != "none":
        c = task.compression
        stages.append(CompressStage(c, task.train.seed, task.server_round).name)
    if p.secure_aggregation:
        dp = (
            f"clip L2 to {p.clip_norm}, add N(0, ({p.noise_multiplier} x {p.clip_norm})^2 / t) "
            "(distributed DP; t = threshold) -> "
            if p.mode == "central"
            else ""
        )
        return [
            *head,
            *stages,
            f"secure aggregation: {dp}clip coordinates to +-{p.secagg_clip_range}, quantize to "
            "uint32 (stochastic rounding), mask (SecAgg+: keys, shares, masked update, unmask)",
            "reply: masked update (the server sees only the sum) + metrics",
        ]
    if p.mode == "local":
        return [*head, *stages, "reply: update only (local DP: no loss, num-examples = 1)"]
    return [*head, *stages, "reply: update + num-examples"]
