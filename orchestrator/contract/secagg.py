"""Secure aggregation on the wire: message types, record names, payload <-> record codecs, and
the one layout both sides flatten an update into (docs/privacy.md, orchestrator/secagg/).

A secure round is the train message (``train``: the task, the global arrays and a ``secagg``
ConfigRecord with the round's parameters) followed by three exchanges of the same sites:

    train                -> site trains, quantizes its update, keeps it; replies keys + metrics
    train.secagg_share   -> neighbours' public keys; replies encrypted Shamir shares
    train.secagg_mask    -> shares addressed to the site; replies the masked update (``masked``)
    train.secagg_unmask  -> survivors and dropped sites; replies the shares that remove masks
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from orchestrator.contract.arrays import array_view, to_array
from orchestrator.secagg import SecAggError

SECAGG = "secagg"
MASKED = "masked"
SHARE, MASK, UNMASK = "train.secagg_share", "train.secagg_mask", "train.secagg_unmask"
MAX_ENTRIES = 64


def to_record(payload: Mapping[str, Any]) -> ConfigRecord:
    """A protocol payload as a ConfigRecord (one level of nesting flattened with ``.``)."""
    flat: dict[str, Any] = {}
    for k, v in payload.items():
        if isinstance(v, Mapping):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return ConfigRecord(flat)


def from_record(record: object) -> dict[str, Any]:
    """The payload of a ``secagg`` record (the protocol's decoders validate the values)."""
    if not isinstance(record, ConfigRecord) or len(record) > MAX_ENTRIES:
        raise SecAggError(f"{SECAGG!r} must be a ConfigRecord of at most {MAX_ENTRIES} entries")
    out: dict[str, Any] = {}
    for k, v in record.items():
        head, dot, tail = str(k).partition(".")
        if dot:
            nested = out.setdefault(head, {})
            if not isinstance(nested, dict):
                raise SecAggError(f"{head!r} is both a value and a section")
            nested[tail] = v
        else:
            if head in out:
                raise SecAggError(f"{head!r} is both a value and a section")
            out[head] = v
    return out


def payload_of(msg: Message) -> dict[str, Any]:
    if msg.has_error():
        raise SecAggError(f"site reported an error: {str(msg.error.reason)[:300]}")
    return from_record(msg.content.get(SECAGG))


def masked_record(y: np.ndarray) -> ArrayRecord:
    """The masked uint32 vector travels as int32 (same bits; the strict decoder's dtypes)."""
    return ArrayRecord({"y": to_array(y.view(np.int32))})


def masked_of(msg: Message) -> np.ndarray:
    rec = msg.content.get(MASKED)
    if not isinstance(rec, ArrayRecord) or list(rec.keys()) != ["y"]:
        raise SecAggError(f"reply lacks the {MASKED!r} array record")
    try:
        a = array_view(rec["y"])
    except ValueError as e:
        raise SecAggError(f"masked input: {e}") from e
    if a.dtype != np.int32 or a.ndim != 1:
        raise SecAggError("masked input must be a 1-d int32 array")
    return a.view(np.uint32)


def reply(msg: Message, payload: Mapping[str, Any], **records: Any) -> Message:
    return Message(content=RecordDict({SECAGG: to_record(payload), **records}), reply_to=msg)


def flatten(update: Mapping[str, np.ndarray], keys: Iterable[str]) -> np.ndarray:
    """The update as one float64 vector, tensors in ``sorted(keys)`` order."""
    return np.concatenate([np.asarray(update[k], np.float64).ravel() for k in sorted(keys)])


def unflatten(vec: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split ``flatten``'s layout back into tensors shaped like ``like`` (same keys)."""
    out, at = {}, 0
    for k in sorted(like):
        n = like[k].size
        out[k] = vec[at : at + n].reshape(like[k].shape)
        at += n
    if at != vec.size:
        raise ValueError(f"vector of {vec.size} values for tensors of {at}")
    return out
