"""Record names and the reply layout of a round's messages.

Server -> site (train and evaluate): ``arrays`` = the global model's trainable tensors (all of
them in full fine-tuning; LoRA adapters + classification head in LoRA mode), ``config`` = the
:class:`~orchestrator.contract.task.SiteTask` record.

Site -> server, train reply: ``arrays`` = the update ``w_local - w_received`` of the same tensors
(after the site's update stages, see ``clients/pipeline.py``), ``metrics`` = ``num-examples`` +
train metrics, ``site`` = ``{"name": ...}`` (SCAFFOLD adds ``scaffold-c`` to the train message and
``scaffold-delta-c`` to the reply, over the same tensors as ``arrays``). Evaluate reply: ``metrics`` (``num-examples``,
``eval-loss``, accuracy/macro-F1/``confusion`` or perplexity) and ``site``.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def train_reply(
    msg: Message,
    update: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    site: str,
    extra_arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Message:
    """A site's reply to a train message (``extra_arrays``: more array records by name, e.g.
    SCAFFOLD's :data:`DELTA_C`)."""
    content = RecordDict(
        {
            ARRAYS: from_numpy(update),
            METRICS: MetricRecord(dict(metrics)),
            SITE: ConfigRecord({SITE_NAME: site}),
            **{name: from_numpy(a) for name, a in (extra_arrays or {}).items()},
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate_reply(msg: Message, metrics: Mapping[str, float | list[int]], site: str) -> Message:
    """A site's reply to an evaluate message."""
    content = RecordDict(
        {METRICS: MetricRecord(dict(metrics)), SITE: ConfigRecord({SITE_NAME: site})}
    )
    return Message(content=content, reply_to=msg)
