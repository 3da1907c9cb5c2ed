"""What a strategy hands the round loop: typed return values, not attributes to read back.

A train round is ``plan = strategy.plan_train(...)`` (who is sampled, from how many, which
messages to send) -> the loop sends them -> ``outcome = strategy.fold_train(...)`` (the new model,
the round's metrics and what became of each site's reply). Evaluation mirrors it. Flower's own
``configure_*`` / ``aggregate_*`` are thin views of these for the stock ``Strategy.start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord

from strategies.replies import RoundReport


@dataclass
class Plan:
    """Messages for one step of a round, and who they are for."""

    messages: list[Message]
    assigned: dict[int, str] = field(default_factory=dict)
    """With a simulation site pool: node id -> the site its message is for ({} otherwise)."""

    @property
    def nodes(self) -> list[int]:
        """The node ids the messages go to, in order."""
        return [m.metadata.dst_node_id for m in self.messages]


@dataclass
class TrainPlan(Plan):
    """A train round before anything is sent: the privacy ledger admits it from these values."""

    population: int = 0
    """Sites the sample was drawn from (the accountant's population)."""
    update_keys: list[str] = field(default_factory=list)
    """The tensors a site's update must hold, sorted (secure aggregation sums exactly these)."""


@dataclass
class TrainOutcome:
    """What a train round produced."""

    arrays: ArrayRecord | None
    """The next global model; None = unchanged (too few accepted replies, a skipped round)."""
    metrics: dict[str, Any]
    """Pooled train metrics and counters (``sites-accepted``, ``bytes-received`` ...)."""
    report: RoundReport
    """Each site's reply: accepted or rejected (with the reason), its metrics, bytes, notes."""
    privacy: dict[str, Any] = field(default_factory=dict)
    """Central DP's columns for the round record (the round's clip, how many were clipped)."""
    skip_reason: str = ""
    """Why the round left the model unchanged, when the protocol skipped it (secure aggregation)."""

    def flower(self) -> tuple[ArrayRecord | None, MetricRecord]:
        """Flower's ``aggregate_train`` return value."""
        return self.arrays, MetricRecord(self.metrics)


@dataclass
class EvaluateOutcome:
    """What an evaluation produced: pooled metrics (None = no site evaluated) and per site."""

    metrics: dict[str, Any] | None = None
    report: RoundReport = field(default_factory=RoundReport)
