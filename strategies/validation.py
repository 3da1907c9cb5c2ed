"""Reject malformed site replies before they touch the aggregate.

A bad reply (missing or extra tensors, wrong shape or dtype, NaN/Inf, no usable example count)
is excluded with a reason; the round goes on with the others.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from orchestrator.contract.arrays import to_numpy
from strategies.math import is_finite

R = TypeVar("R")


def records_of(content: RecordDict, cls: type[R]) -> list[R]:
    """The records of one type in a message.

    Not ``RecordDict.array_records`` & co: those build a view that forms a reference cycle with
    the message, so a folded reply would stay in memory until the cyclic GC runs, and memory
    would grow with the number of replies.
    """
    return [v for v in content.values() if isinstance(v, cls)]


class RejectedReply(ValueError):
    """A reply that cannot enter the aggregate; ``str(e)`` is the reason that gets logged."""


def reply_parts(msg: Message, weighted_by_key: str) -> tuple[ArrayRecord, MetricRecord, float]:
    """The update, the metrics and the weight of a train reply, or :class:`RejectedReply`."""
    if msg.has_error():
        raise RejectedReply(f"site reported an error: {msg.error.reason}")
    arrays_found = records_of(msg.content, ArrayRecord)
    metrics_found = records_of(msg.content, MetricRecord)
    if len(arrays_found) != 1:
        raise RejectedReply(f"expected 1 ArrayRecord, got {len(arrays_found)}")
    if len(metrics_found) != 1:
        raise RejectedReply(f"expected 1 MetricRecord, got {len(metrics_found)}")
    arrays, metrics = arrays_found[0], metrics_found[0]
    n = metrics.get(weighted_by_key)
    if isinstance(n, list) or n is None or not np.isfinite(n) or n <= 0:
        raise RejectedReply(f"metric {weighted_by_key!r} must be a number > 0, got {n!r}")
    return arrays, metrics, float(n)


def check_update(
    update: ArrayRecord,
    expected_keys: Collection[str],
    reference: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Views of the update's arrays after checking them against the global model.

    ``expected_keys``: exactly the keys a site must send (the trainable tensors).
    ``reference``: the global arrays; each update must match its shape and dtype.
    """
    keys = set(update.keys())
    missing = sorted(set(expected_keys) - keys)
    extra = sorted(keys - set(expected_keys))
    if missing or extra:
        raise RejectedReply(
            f"keys differ from the trainable tensors: missing={_few(missing)} extra={_few(extra)}"
        )
    arrays = to_numpy(update)
    for key, value in arrays.items():
        ref = reference[key]
        if value.shape != ref.shape:
            raise RejectedReply(f"{key}: shape {value.shape}, expected {ref.shape}")
        if value.dtype != ref.dtype:
            raise RejectedReply(f"{key}: dtype {value.dtype}, expected {ref.dtype}")
    for key, value in arrays.items():
        if not is_finite(value):
            raise RejectedReply(f"{key}: contains NaN or Inf")
    return arrays


def _few(keys: list[str], n: int = 3) -> str:
    return (
        "[]"
        if not keys
        else ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
    )
