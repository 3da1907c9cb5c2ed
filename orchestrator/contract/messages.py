"""Record names and the reply layout of a round's messages.

Server -> site (train and evaluate): ``arrays`` = the global model's trainable tensors (all of
them in full fine-tuning; LoRA adapters + classification head in LoRA mode), ``config`` = the
:class:`~orchestrator.contract.task.SiteTask` record.

Site -> server, train reply: ``arrays`` = the update ``w_local - w_received`` of the same tensors
(after the site's update stages, see ``clients/pipeline.py``), ``metrics`` = ``num-examples`` +
train metrics, ``site`` = ``{"name": ...}`` (SCAFFOLD adds ``scaffold-c`` to the train message and
``scaffold-delta-c`` to the reply, over the same tensors as ``arrays``). Evaluate reply: ``metrics`` (``num-examples``,
``eval-loss``, accuracy/macro-F1/``confusion`` or perplexity) and ``site``.

LoRA with ``compression.lora_base_once``: the config carries ``base-hash``, the frozen base's
hash; the server sends only the trainable tensors to a site whose replies' ``site`` record
confirmed that hash (clients/base_cache.py).

Bytes on the wire (:func:`wire_bytes`): Flower moves a message as a tree of objects (the message
header, its RecordDict, each record, each array and its chunks), each serialized ("deflated")
and stored / fetched by content hash, so an object that appears twice travels once. fedray
counts exactly those serialized objects; transport framing (gRPC/HTTP, TLS) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from orchestrator.contract.arrays import from_numpy

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
SITE_NAME = "name"
SERVER_ROUND = "server-round"
SCAFFOLD_C = "scaffold-c"
"""Train message, SCAFFOLD only: the server control variate ``c`` (same tensors as ``arrays``)."""
DELTA_C = "scaffold-delta-c"
"""Train reply, SCAFFOLD only: the change ``c_i+ - c_i`` of the site's control variate."""
BASE_HASH = "base-hash"
"""LoRA base-once: the frozen base's hash (server -> site config; site -> server ``site``)."""


def site_record(site: str, base_hash: str = "") -> ConfigRecord:
    """The reply's ``site`` record: its name, and the LoRA base it holds (if any)."""
    rec = ConfigRecord({SITE_NAME: site})
    if base_hash:
        rec[BASE_HASH] = base_hash
    return rec


def train_reply(
    msg: Message,
    update: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    site: str,
    extra_arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    base_hash: str = "",
) -> Message:
    """A site's reply to a train message (``extra_arrays``: more array records by name, e.g.
    SCAFFOLD's :data:`DELTA_C`)."""
    content = RecordDict(
        {
            ARRAYS: from_numpy(update),
            METRICS: MetricRecord(dict(metrics)),
            SITE: site_record(site, base_hash),
            **{name: from_numpy(a) for name, a in (extra_arrays or {}).items()},
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate_reply(
    msg: Message, metrics: Mapping[str, float | list[int]], site: str, base_hash: str = ""
) -> Message:
    """A site's reply to an evaluate message."""
    content = RecordDict({METRICS: MetricRecord(dict(metrics)), SITE: site_record(site, base_hash)})
    return Message(content=content, reply_to=msg)


def wire_objects(obj: Any, out: dict[str, int] | None = None) -> dict[str, int]:
    """``{object id: serialized size}`` of every distinct object in ``obj``'s tree (a Message,
    RecordDict, record or Array: Flower's inflatable objects)."""
    out = {} if out is None else out
    oid = obj.object_id
    if oid in out:
        return out
    for child in (obj.children or {}).values():
        wire_objects(child, out)
    out[oid] = len(obj.deflate())
    return out


def wire_bytes(obj: Any) -> int:
    """Bytes Flower transfers to move ``obj`` (see the module doc for what is counted)."""
    return sum(wire_objects(obj).values())


def sent_bytes(messages: list[Message]) -> dict[int, int]:
    """Wire bytes of each message by destination node; a content tree shared by several
    messages (one model sent to many sites) is measured once."""
    trees: dict[int, int] = {}
    out: dict[int, int] = {}
    for m in messages:
        key = id(m.content)
        if key not in trees:
            trees[key] = wire_bytes(m.content)
        dst = m.metadata.dst_node_id
        out[dst] = out.get(dst, 0) + len(m.deflate()) + trees[key]
    return out
