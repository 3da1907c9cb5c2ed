"""A site's reply pipeline: train -> update -> (clip / noise) -> (compress) -> (mask) -> reply.

Local training and the update (``w_local - w_received``) are fixed; what happens to the update
before it leaves the site is a list of :class:`UpdateStage` chosen by the task
(:func:`update_stages`). A feature (differential privacy, compression, secure-aggregation masks,
simulated attacks) adds one stage class and one branch in :func:`update_stages`; the ClientApp
does not change. ``--dry-run`` lists the stages (:func:`describe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from orchestrator.contract.task import SiteTask

Arrays = dict[str, np.ndarray]


@dataclass
class SiteContext:
    """What a stage may read (the task, the site) and write (metrics added to the reply)."""

    task: SiteTask
    site: str
    node_config: Mapping[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class UpdateStage(Protocol):
    """One transformation of the update on its way out of the site."""

    name: str

    def __call__(self, update: Arrays, ctx: SiteContext) -> Arrays: ...


def update_stages(task: SiteTask) -> list[UpdateStage]:
    """The stages ``task`` asks for, in pipeline order (none: the update leaves as computed)."""
    return []


def run_stages(stages: Sequence[UpdateStage], update: Arrays, ctx: SiteContext) -> Arrays:
    for stage in stages:
        update = stage(update, ctx)
    return update


def describe(task: SiteTask) -> list[str]:
    """The site pipeline as text, for ``--dry-run``."""
    steps = (
        f"{task.local_steps} step(s)" if task.local_steps else f"{task.local_epochs} epoch(s)"
    )
    head = [
        f"train: AdamW lr={task.train.lr} batch={task.train.micro_batch_size}, {steps}"
        + (f", FedProx mu={task.proximal_mu}" if task.proximal_mu else ""),
        "update: w_local - w_received (trainable tensors)",
    ]
    return [*head, *(s.name for s in update_stages(task)), "reply: update + num-examples"]
