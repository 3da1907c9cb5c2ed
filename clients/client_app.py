"""The site entry point: a Flower ClientApp that fine-tunes locally and replies with the update.

    # stock Flower (pyproject [tool.flwr.app.components] clientapp = "clients.client_app:app")
    flwr run .
    # a real site (what `fedray site` wraps):
    flower-supernode --superlink HOST:PORT --node-config "data-path=/data/site.csv site-name=bank-a"

Node config (the only thing a site provides; see clients/site_data.py):
    data-path       local csv/jsonl/json/parquet (text + label columns) or .txt file
    site-name       optional display name in the server's table (default: file stem)
    partition-id, num-partitions   simulated sites only (set by Flower's simulation engine)
    num-threads     optional torch intra-op threads for this site (default: torch's choice)

Everything else (model config, tokenizer, task, hyperparameters) arrives from the server in the
message's ``config`` record (orchestrator/contract/task.py); the reply layout is in
orchestrator/contract/messages.py.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.pipeline import SiteContext, run_stages, update_stages
from clients.site_data import SiteData, load_site_data
from clients.train import Encoded, encode, evaluate, local_train
from orchestrator.contract.arrays import to_numpy
from orchestrator.contract.messages import ARRAYS, CONFIG, evaluate_reply, train_reply
from orchestrator.contract.metrics import NUM_EXAMPLES
from orchestrator.contract.model import build, load_state, trainable_names
from orchestrator.contract.task import SiteTask

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[SiteTask, SiteData, torch.nn.Module]:
    """Parse the task, load this site's data and the received global weights."""
    threads = context.node_config.get("num-threads")
    if threads:
        torch.set_num_threads(int(threads))
    task = SiteTask.from_record(msg.content[CONFIG])
    data = load_site_data(context.node_config, task)
    torch.manual_seed(task.train.seed)
    model = build(task.spec)
    load_state(model, to_numpy(msg.content[ARRAYS]))
    return task, data, model


def _encode(task: SiteTask, texts: list[str], labels: list[str] | None) -> Encoded:
    return encode(task.tokenizer, texts, task.max_length, labels, task.labels)


@app.train()
def train(msg: Message, context: Context) -> Message:
    task, data, model = _setup(msg, context)
    examples = _encode(task, data.train_texts, data.train_labels)
    params = {k: p for k, p in model.named_parameters() if k in set(trainable_names(model))}
    received = {k: p.detach().clone() for k, p in params.items()}
    metrics = local_train(model, examples, task)
    update = {k: (p.detach() - received[k]).numpy() for k, p in params.items()}
    ctx = SiteContext(task, data.name, dict(context.node_config))
    update = run_stages(update_stages(task), update, ctx)
    reply_metrics = {**metrics, **ctx.metrics, NUM_EXAMPLES: len(examples)}
    return train_reply(msg, update, reply_metrics, data.name)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    task, data, model = _setup(msg, context)
    examples = _encode(task, data.eval_texts, data.eval_labels)
    metrics = evaluate(
        model, examples, task.spec.task, task.train.micro_batch_size, len(task.labels)
    )
    return evaluate_reply(msg, {**metrics, NUM_EXAMPLES: len(examples)}, data.name)


__all__ = ["app"]
