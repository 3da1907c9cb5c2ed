"""The contract between a site's reply pipeline (clients/pipeline.py) and its stages: the
update type, what a stage may read and write (:class:`SiteContext`), and the stage protocol.
Stage modules (clients/privacy.py, ...) import this, not the pipeline that imports them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.contract.arrays import Arrays
from orchestrator.contract.task import SiteTask

if TYPE_CHECKING:
    from clients.site_state import SiteStateStore


@dataclass
class SiteContext:
    """What a stage may read (the task, the site) and write (metrics added to the reply)."""

    task: SiteTask
    site: str
    node_config: Mapping[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    honest_update_of: Callable[[int], Arrays] | None = None
    """Simulation only: the honest update simulated site ``i`` computes this round (colluding
    attackers use it; see :class:`AttackStage`)."""
    state: SiteStateStore | None = None
    """This site's persistent state for this run (clients/site_state.py): a stage that keeps
    something across rounds (e.g. an error-feedback residual) loads and saves it here."""


class UpdateStage(Protocol):
    """One transformation of the update on its way out of the site."""

    name: str

    def __call__(self, update: Arrays, ctx: SiteContext) -> Arrays: ...
