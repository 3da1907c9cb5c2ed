"""The server side of a round as a pipeline of small stages.

    collect -> decode + validate -> reply stages (robust filter / clip) -> fold -> aggregate
    stages (noise) -> server optimizer step -> record

``collect`` is :func:`strategies.replies.stream_replies`; ``decode + validate`` is
:func:`strategies.validation.decode_train_reply` (every failure is a rejected reply with a
reason, never an exception out of the round); the server step is the strategy's
``server_update`` (FedAvg: ``w + eta * mean``; FedAdam & co: an adaptive step). The stages in
between are the extension points: a robust rule is an :class:`Aggregator`, update clipping a
:class:`ReplyStage`, server-side noise an :class:`AggregateStage`. A strategy holds a list of each;
a feature adds a stage and its config section instead of a strategy subclass per combination.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from orchestrator.contract.arrays import Arrays
from orchestrator.contract.privacy import update_norm
from strategies.running_sum import RunningSum


@dataclass
class Reply:
    """A decoded, validated train reply."""

    node_id: int
    site: str
    update: Arrays
    weight: float
    """``num-examples`` as the site reported it (bounded by validation)."""
    metrics: dict[str, float] = field(default_factory=dict)
    nbytes: int = 0
    note: str = ""
    """Set by a reply stage that changed the reply (e.g. ``clipped``); goes to the record."""
    extras: dict[str, Arrays] = field(default_factory=dict)
    """Further validated array records a strategy asks for (SCAFFOLD's ``scaffold-delta-c``),
    by record name; same tensors as ``update``."""

    @cached_property
    def norm(self) -> float:
        """``||update||_2`` (float64), computed at most once per reply: the round record, the
        clip stages and the reply store all read it. A stage that changes the update returns a
        new reply (``dataclasses.replace``), never edits ``update`` in place, so this never goes
        stale; the new reply's norm is computed only if a later step asks for it."""
        return update_norm(self.update)


@dataclass
class Aggregate:
    """What the fold stage hands the server step: the folded updates, and per-site notes
    (``discarded``, ``trimmed``, ``clipped`` ...) for the round record."""

    folded: RunningSum
    notes: dict[str, str] = field(default_factory=dict)

    def mean(self) -> Arrays:
        return self.folded.mean()


class ReplyStage(Protocol):
    """Transforms (or rejects, raising ``RejectedReply``) one reply before it is folded."""

    name: str

    def __call__(self, reply: Reply, server_round: int) -> Reply: ...


class AggregateStage(Protocol):
    """Transforms the aggregate before the server step (e.g. adds calibrated noise)."""

    name: str

    def __call__(self, agg: Aggregate, server_round: int) -> Aggregate: ...


class Aggregator(ABC):
    """The fold stage: takes accepted replies one at a time, then yields the aggregate."""

    name: str = "aggregator"

    @abstractmethod
    def add(self, reply: Reply) -> None: ...

    @abstractmethod
    def result(self) -> Aggregate: ...

    @property
    @abstractmethod
    def count(self) -> int:
        """Replies added so far."""


def describe(
    reply_stages: Sequence[ReplyStage],
    aggregator: Aggregator,
    aggregate_stages: Sequence[AggregateStage],
    server_step: str,
) -> list[str]:
    """The server pipeline as text, for ``--dry-run``."""
    return [
        "collect: stream replies as they arrive",
        "decode + validate: keys, shapes, dtypes, finite values, num-examples",
        *(f"reply stage: {s.name}" for s in reply_stages),
        f"fold: {aggregator.name}",
        *(f"aggregate stage: {s.name}" for s in aggregate_stages),
        f"server step: {server_step}",
        "record: metrics.jsonl row + checkpoint",
    ]
