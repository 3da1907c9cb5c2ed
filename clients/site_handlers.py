"""What a site does with each message: local training, evaluation and the SecAgg steps, as plain
functions ``(msg, context) -> reply``. The ClientApp (clients/client_app.py) calls them, in its
own process or, at a real site, in the site's warm worker (clients/site_worker.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message

from clients import scaffold, secagg
from clients.attacks import flip_labels
from clients.base_cache import with_base
from clients.pipeline import SiteContext, is_attacker, run_stages, update_stages
from clients.site_data import SiteData, load_site_data
from clients.site_state import site_store
from clients.train import Encoded, encode, evaluate, local_train, site_device
from orchestrator.contract.arrays import to_numpy
from orchestrator.contract.messages import ARRAYS, CONFIG, DELTA_C, evaluate_reply, train_reply
from orchestrator.contract.metrics import NUM_EXAMPLES
from orchestrator.contract.model import build, load_state, model_state, trainable_names
from orchestrator.contract.site_pool import acting_node_config
from orchestrator.contract.task import SiteTask


def _setup(
    msg: Message, task: SiteTask, node_config: Mapping[str, Any], context: Context | None = None
) -> tuple[SiteData, torch.nn.Module]:
    """Load this site's data and the received global weights (LoRA: plus the base this site
    keeps, when only the trainable tensors came; clients/base_cache.py)."""
    data = load_site_data(node_config, task)
    torch.manual_seed(task.train.seed)
    model = build(task.spec)
    arrays = to_numpy(msg.content[ARRAYS])
    if task.base_hash and context is not None:
        keys = model_state(model)
        arrays = with_base(
            arrays, task.base_hash, keys, trainable_names(model), context, node_config
        )
    load_state(model, arrays)
    return data, model.to(site_device(node_config.get("device")))


def _encode(task: SiteTask, texts: list[str], labels: list[str] | None) -> Encoded:
    return encode(task.tokenizer, texts, task.max_length, labels, task.labels)


@contextmanager
def _phase(phases: dict[str, float] | None, name: str) -> Iterator[None]:
    """Adds the block's wall time to ``phases[name]`` (seconds), when timing was asked for."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def honest_update(
    msg: Message,
    task: SiteTask,
    node_config: Mapping[str, Any],
    flip: bool = False,
    control: scaffold.SiteControl | None = None,
    context: Context | None = None,
    phases: dict[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float], int, str]:
    """Local training from the received weights: ``(update, metrics, num-examples, site)``.
    ``task`` is the message's decoded ``config`` record (decoded once per message, by the caller).

    ``flip``: a simulated label-flipping attacker trains on labels ``i -> C-1-i``.
    ``control``: SCAFFOLD's control variates; local steps are corrected by ``c - c_i``.
    ``phases``: filled with the wall seconds of each step (``setup``: data and model load,
    ``tokenize``, ``train``: local steps and the update).
    """
    with _phase(phases, "setup"):
        data, model = _setup(msg, task, node_config, context)
    with _phase(phases, "tokenize"):
        examples = _encode(task, data.train_texts, data.train_labels)
    if flip and examples.labels is not None:
        examples.labels = torch.from_numpy(flip_labels(examples.labels.numpy(), len(task.labels)))
    keys = set(trainable_names(model))
    params = {k: p for k, p in model.named_parameters() if k in keys}
    received = {k: p.detach().clone() for k, p in params.items()}
    trainable = {k: v.cpu().numpy() for k, v in received.items()}
    corr = control.correction(trainable) if control else None
    with _phase(phases, "train"):
        metrics = local_train(model, examples, task, corr)
        update = {k: (p.detach() - received[k]).cpu().numpy() for k, p in params.items()}
    return update, metrics, len(examples), data.name


def timing_metrics(
    overhead: Mapping[str, float] | None,
    task: SiteTask,
    prefix: str,
    phases: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The message's cost as reply metrics (real sites): its overhead before the handler ran and
    the handler's steps, ``{prefix}{step}-s``. None under local DP, where nothing but the noised
    update leaves the site."""
    if not overhead or task.privacy.mode == "local":
        return {}
    steps = {f"{prefix}{name}-s": round(s, 4) for name, s in (phases or {}).items()}
    return {
        f"{prefix}overhead-s": overhead["s"],
        f"{prefix}overhead-cpu-s": overhead["cpu-s"],
        **steps,
    }


def _threads(msg: Message, context: Context) -> dict[str, Any]:
    """The node config this message is handled with (a simulated pool node acts as the site
    the message names; orchestrator/contract/site_pool.py), after applying ``num-threads``."""
    node_config = acting_node_config(msg.content, context.node_config)
    if threads := node_config.get("num-threads"):
        torch.set_num_threads(int(threads))
    return node_config


def train(msg: Message, context: Context, overhead: Mapping[str, float] | None = None) -> Message:
    """``overhead``: what this message cost the site before the handler ran (real sites only;
    clients/site_worker.py ``message_overhead``), reported as ``overhead-s``/``overhead-cpu-s``."""
    node_config = _threads(msg, context)
    task = SiteTask.from_record(msg.content[CONFIG])
    attacker = is_attacker(task, node_config)
    flip = attacker and task.attack.kind == "label_flip"
    store = site_store(context, task.state_key, task.server_round, node_config, task.sim_state_dir)
    control = scaffold.SiteControl(msg.content, store) if task.scaffold else None
    phases: dict[str, float] | None = {} if overhead else None
    update, metrics, n, site = honest_update(msg, task, node_config, flip, control, context, phases)
    extra: dict[str, dict[str, np.ndarray]] = {}
    if control is not None:
        steps = int(metrics["train-steps"])
        extra[DELTA_C] = control.finish(update, steps, task.train.lr)

    def colluder(pid: int) -> dict[str, np.ndarray]:  # simulation only (AttackStage)
        other = {**node_config, "partition-id": pid}
        return honest_update(msg, task, other, flip, context=context)[0]

    ctx = SiteContext(
        task, site, node_config, honest_update_of=colluder if attacker else None, state=store
    )
    update = run_stages(update_stages(task, node_config), update, ctx)
    if task.privacy.mode == "local":
        # Local DP covers the update only: nothing else computed from the data leaves either.
        metrics, n = {}, 1
    resets = {"site-state-reset": float(len(store.resets))} if store.resets else {}
    timing = timing_metrics(overhead, task, "", phases)
    reply_metrics = {**metrics, **ctx.metrics, **resets, **timing, NUM_EXAMPLES: n}
    if task.privacy.secure_aggregation:  # the update stays here; only masked, later
        return secagg.begin(msg, context, task, update, reply_metrics, site)
    return train_reply(msg, update, reply_metrics, site, extra, base_hash=task.base_hash)


def secagg_share(msg: Message, context: Context) -> Message:
    return secagg.share(msg, context)


def secagg_mask(msg: Message, context: Context) -> Message:
    return secagg.mask(msg, context)


def secagg_unmask(msg: Message, context: Context) -> Message:
    return secagg.unmask(msg, context)


def evaluate_(
    msg: Message, context: Context, overhead: Mapping[str, float] | None = None
) -> Message:
    node_config = _threads(msg, context)
    task = SiteTask.from_record(msg.content[CONFIG])
    phases: dict[str, float] | None = {} if overhead else None
    with _phase(phases, "setup"):
        data, model = _setup(msg, task, node_config, context)
    with _phase(phases, "tokenize"):
        examples = _encode(task, data.eval_texts, data.eval_labels)
    with _phase(phases, "evaluate"):
        metrics = evaluate(
            model, examples, task.spec.task, task.train.micro_batch_size, len(task.labels)
        )
    timing = timing_metrics(overhead, task, "eval-", phases)
    metrics = {**metrics, **timing, NUM_EXAMPLES: len(examples)}
    return evaluate_reply(msg, metrics, data.name, base_hash=task.base_hash)


__all__ = ["evaluate_", "honest_update", "secagg_mask", "secagg_share", "secagg_unmask", "train"]
