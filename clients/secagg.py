"""The site's side of secure aggregation (orchestrator/secagg, orchestrator/contract/secagg.py).

The train handler calls :func:`begin` with the finished update instead of replying with it:
the update is (clipped and noised for distributed DP, then) quantized and kept in the node's
``Context.state`` with the round's secrets, and only public keys + metrics leave. The three
``train.secagg_*`` handlers each restore that state, run one protocol step and store it again
(a ClientApp process need not live from one message to the next).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from orchestrator.contract.arrays import array_view, to_array
from orchestrator.contract.messages import METRICS, SITE, SITE_NAME
from orchestrator.contract.secagg import (
    MASKED,
    flatten,
    masked_record,
    payload_of,
    reply,
)
from orchestrator.contract.task import SiteTask
from orchestrator.secagg import SecAggError, SiteRound
from orchestrator.secagg.dp import privatize
from orchestrator.secagg.quantize import quantize

STATE, QUANTIZED = "secagg-state", "secagg-q"


def begin(
    msg: Message,
    context: Context,
    task: SiteTask,
    update: dict[str, np.ndarray],
    metrics: dict[str, Any],
    site: str,
) -> Message:
    """Step 0: quantize and keep the update, reply with this round's public keys + metrics."""
    me, keys = SiteRound.advertise(payload_of(msg))
    p, priv = me.params, task.privacy
    vec = flatten(update, update)
    if vec.size != p.length:
        raise SecAggError(f"update has {vec.size} values, the server expects {p.length}")
    rng = np.random.default_rng()  # rounding and noise: fresh OS entropy, never a task seed
    extra: dict[str, float] = {}
    if priv.mode == "central":  # distributed DP: this site's share of the central noise
        vec, _norm, std = privatize(vec, priv.clip_norm, priv.noise_multiplier, p.threshold, rng)
        extra = {"dp-site-noise-std": std}  # public (from the config); never the update's norm
    q, clipped = quantize(vec, p.clip_range, p.num_sites, rng)
    context.state[STATE] = ConfigRecord(me.to_state())
    context.state[QUANTIZED] = ArrayRecord({"q": to_array(q.view(np.int32))})
    out = {**metrics, **extra, "secagg-clipped-coords": clipped}
    return reply(msg, keys, **{METRICS: MetricRecord(out), SITE: ConfigRecord({SITE_NAME: site})})


def _restore(context: Context) -> SiteRound:
    rec = context.state.get(STATE)
    if not isinstance(rec, ConfigRecord):
        raise SecAggError("no secure-aggregation round in progress at this site")
    return SiteRound.from_state(dict(rec))


def share(msg: Message, context: Context) -> Message:
    me = _restore(context)
    out = me.share_keys(payload_of(msg))
    context.state[STATE] = ConfigRecord(me.to_state())
    return reply(msg, out)


def mask(msg: Message, context: Context) -> Message:
    me = _restore(context)
    q = array_view(context.state[QUANTIZED]["q"]).view(np.uint32)
    y, out = me.masked_input(payload_of(msg), q)
    context.state[STATE] = ConfigRecord(me.to_state())
    del context.state[QUANTIZED]  # the plain update is not needed any more
    return reply(msg, out, **{MASKED: masked_record(y)})


def unmask(msg: Message, context: Context) -> Message:
    me = _restore(context)
    out = me.unmask(payload_of(msg))
    del context.state[STATE]  # the round's secrets end here
    return reply(msg, out)
