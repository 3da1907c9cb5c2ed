"""Decode and validate site replies before they touch the aggregate.

Everything a site sends is untrusted. A reply that cannot be decoded, has missing or extra
tensors, a wrong shape or dtype, NaN/Inf, an unusable example count or malformed metrics is
rejected with a reason (:class:`RejectedReply`); the round goes on with the others. Nothing is
unpickled; arrays are parsed by :func:`orchestrator.contract.arrays.array_view`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from orchestrator.config.compression import CompressionConfig
from orchestrator.contract.arrays import array_view
from orchestrator.contract.compression import PACKED, CodecError, decode_record
from orchestrator.contract.messages import ARRAYS, SITE, SITE_NAME, wire_bytes
from orchestrator.contract.metrics import CONFUSION, NUM_EXAMPLES
from strategies.pipeline import Reply

R = TypeVar("R")

MAX_EXAMPLES = 10**9
"""Largest ``num-examples`` a reply may claim (beyond it the reply is rejected, not capped)."""
MAX_METRICS = 64
"""Most metrics a reply may carry (each becomes a column of the round record)."""
MAX_METRIC_ABS = 1e12
"""Scalar metrics outside ``[-1e12, 1e12]`` are rejected (they would wreck the pooled means)."""
MAX_SITE_NAME = 64


def is_finite(x: np.ndarray) -> bool:
    """True when every element is finite: one BLAS dot product (x . x), no boolean temporary.

    NaN/Inf anywhere make the dot non-finite; so do finite values beyond ~1e19 (their squares
    overflow), and an update that large is rejected too, which is what we want. The dot runs at
    several times the speed of ``np.isfinite(x).all()`` and keeps validation off the critical path.
    """
    flat = x.reshape(-1)
    if flat.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):  # overflow is the answer we look for, not a problem
            return bool(np.isfinite(np.dot(flat, flat)))
    if np.issubdtype(flat.dtype, np.floating):
        return bool(np.isfinite(flat.astype(np.float32)).all())
    return True  # integer tensors cannot hold NaN/Inf


class RejectedReply(ValueError):
    """A reply that cannot enter the aggregate; ``str(e)`` is the reason that gets logged."""


def records_of(content: RecordDict, cls: type[R]) -> list[R]:
    """The records of one type in a message.

    Not ``RecordDict.array_records`` & co: those build a view that forms a reference cycle with
    the message, so a folded reply would stay in memory until the cyclic GC runs, and memory
    would grow with the number of replies.
    """
    return [v for v in content.values() if isinstance(v, cls)]


def site_name(msg: Message) -> str:
    """The site's self-reported name (a ``site`` ConfigRecord), else its node id."""
    try:
        if not msg.has_error():
            rec = msg.content.get(SITE)
            if isinstance(rec, ConfigRecord) and isinstance(rec.get(SITE_NAME), str):
                name = "".join(c for c in rec[SITE_NAME] if c.isprintable())[:MAX_SITE_NAME]
                if name:
                    return name
    except Exception:  # a malformed record must not break naming; fall back to the node id
        pass
    return str(msg.metadata.src_node_id)


def _one(content: RecordDict, cls: type[R]) -> R:
    found = records_of(content, cls)
    if len(found) != 1:
        raise RejectedReply(f"expected 1 {cls.__name__}, got {len(found)}")
    return found[0]


def _weight(metrics: MetricRecord, key: str) -> float:
    n = metrics.get(key)
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n < 1:
        raise RejectedReply(f"metric {key!r} must be a whole number >= 1, got {n!r}")
    if not float(n).is_integer():
        raise RejectedReply(f"metric {key!r} must be a whole number, got {n!r}")
    if n > MAX_EXAMPLES:
        raise RejectedReply(f"metric {key!r}={n:g} exceeds {MAX_EXAMPLES:g}")
    return float(n)


def scalar_metrics(metrics: MetricRecord, skip: Collection[str] = ()) -> dict[str, float]:
    """The reply's scalar metrics, bounded; lists (other than ``skip``) are rejected."""
    if len(metrics) > MAX_METRICS:
        raise RejectedReply(f"{len(metrics)} metrics, at most {MAX_METRICS} allowed")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if k in skip:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RejectedReply(f"metric {k!r} must be a number, got {type(v).__name__}")
        if not math.isfinite(v) or abs(v) > MAX_METRIC_ABS:
            raise RejectedReply(f"metric {k!r}={v!r} is not a finite number within +-1e12")
        out[str(k)[:MAX_SITE_NAME]] = float(v)
    return out


def decode_train_reply(
    msg: Message,
    expected_keys: Collection[str] | None,
    reference: Mapping[str, np.ndarray],
    weighted_by_key: str = NUM_EXAMPLES,
    extra_arrays: Collection[str] = (),
    compression: CompressionConfig | None = None,
    nbytes: int | None = None,
) -> Reply:
    """A validated :class:`Reply`, or :class:`RejectedReply` (any decoding failure included).

    ``expected_keys``: exactly the tensors a site must send (None = any subset of the global
    model's, learnt from the first accepted reply). ``reference``: the global arrays.
    ``extra_arrays``: names of further array records the reply must hold besides ``arrays``
    (e.g. SCAFFOLD's ``scaffold-delta-c``), each checked like the update (same tensors).
    ``compression``: how the update is encoded (decoded here, strictly, into float32 tensors).
    ``nbytes``: the reply's wire size when the caller measured it already.
    """
    if msg.has_error():
        raise RejectedReply(f"site reported an error: {str(msg.error.reason)[:500]}")
    try:
        record = _update_record(msg.content, extra_arrays)
        metrics = _one(msg.content, MetricRecord)
        n = _weight(metrics, weighted_by_key)
        kind = compression.kind if compression is not None else "none"
        if expected_keys is None:
            if kind in PACKED:
                raise RejectedReply(f"{kind} replies need the server to know the trainable keys")
            unknown = set(record.keys()) - set(reference)
            if unknown or not record:
                raise RejectedReply(f"keys not in the global model: {_few(sorted(unknown))}")
            expected_keys = set(record.keys())
        if kind == "none":
            update = check_update(record, expected_keys, reference)
        else:
            update = decode_compressed(record, expected_keys, reference, compression)
        extras: dict[str, dict[str, np.ndarray]] = {}
        for name in extra_arrays:
            extra = msg.content[name]
            try:
                extras[name] = check_update(extra, expected_keys, reference)
            except RejectedReply as e:
                raise RejectedReply(f"{name}: {e}") from e
        scalars = scalar_metrics(metrics)
        size = wire_bytes(msg) if nbytes is None else nbytes
    except RejectedReply:
        raise
    except Exception as e:  # anything else a hostile payload triggers is a rejection too
        raise RejectedReply(f"malformed reply: {type(e).__name__}: {str(e)[:300]}") from e
    site = site_name(msg)
    return Reply(msg.metadata.src_node_id, site, update, n, scalars, size, extras=extras)


def _update_record(content: RecordDict, extra_arrays: Collection[str]) -> ArrayRecord:
    """The update's ArrayRecord: the only one, or (with ``extra_arrays``) the one named
    ``arrays`` next to exactly the named extras."""
    if not extra_arrays:
        return _one(content, ArrayRecord)
    names = sorted(k for k, v in content.items() if isinstance(v, ArrayRecord))
    expected = sorted({ARRAYS, *extra_arrays})
    if names != expected:
        raise RejectedReply(f"array records {names[:5]}, expected {expected}")
    return content[ARRAYS]


def decode_compressed(
    record: ArrayRecord,
    expected_keys: Collection[str],
    reference: Mapping[str, np.ndarray],
    compression: CompressionConfig,
) -> dict[str, np.ndarray]:
    """The dense float32 update of an encoded reply (layout checked before parsing)."""
    missing = sorted(set(expected_keys) - set(reference))
    if missing:
        raise RejectedReply(f"keys not in the global model: {_few(missing)}")
    ref = {k: reference[k] for k in sorted(expected_keys)}
    try:
        update = decode_record(
            record, compression.kind, ref, compression.block_size, compression.ratio
        )
    except CodecError as e:
        raise RejectedReply(f"{compression.kind} update: {e}") from e
    return all_finite(update)


def received_bytes(msg: Message) -> int:
    """Wire bytes of a received message; 0 if even that fails on a malformed one."""
    try:
        return wire_bytes(msg)
    except Exception:  # a hostile message must not break the round's accounting
        return 0


def decode_evaluate_reply(
    msg: Message, num_classes: int | None = None, weighted_by_key: str = NUM_EXAMPLES
) -> tuple[float, dict[str, float], np.ndarray | None]:
    """``(num-examples, scalar metrics, confusion matrix or None)`` of an evaluate reply.

    ``num_classes``: the confusion matrix must be ``num_classes x num_classes`` of
    non-negative integers summing to ``num-examples``.
    """
    if msg.has_error():
        raise RejectedReply(f"site reported an error: {str(msg.error.reason)[:500]}")
    try:
        metrics = _one(msg.content, MetricRecord)
        n = _weight(metrics, weighted_by_key)
        scalars = scalar_metrics(metrics, skip=(CONFUSION,))
        confusion = None
        if CONFUSION in metrics:
            confusion = _confusion(metrics[CONFUSION], num_classes, n)
    except RejectedReply:
        raise
    except Exception as e:
        raise RejectedReply(f"malformed reply: {type(e).__name__}: {str(e)[:300]}") from e
    return n, scalars, confusion


def _confusion(value: object, num_classes: int | None, n: float) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise RejectedReply("confusion must be a list of integers")
    k = math.isqrt(len(value))
    if k * k != len(value) or (num_classes is not None and k != num_classes):
        raise RejectedReply(f"confusion has {len(value)} entries, expected {num_classes or 'k'}^2")
    c = np.asarray(value, dtype=np.int64)
    if (c < 0).any() or int(c.sum()) != int(n):
        raise RejectedReply(f"confusion entries must be >= 0 and sum to num-examples={n:g}")
    return c


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
    arrays: dict[str, np.ndarray] = {}
    for key, value in update.items():
        ref = reference[key]
        # Cheap declared-metadata checks before any parsing of the payload.
        if tuple(value.shape) != ref.shape:
            raise RejectedReply(f"{key}: shape {tuple(value.shape)}, expected {ref.shape}")
        if value.dtype != str(ref.dtype):
            raise RejectedReply(f"{key}: dtype {value.dtype}, expected {ref.dtype}")
        try:
            arrays[key] = array_view(value)
        except ValueError as e:
            raise RejectedReply(f"{key}: {e}") from e
    return all_finite(arrays)


def all_finite(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` unchanged, or a rejection naming the first tensor with a NaN or Inf."""
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
