"""The site entry point: a Flower ClientApp that fine-tunes locally and replies with the update.

    # stock Flower (pyproject [tool.flwr.app.components] clientapp = "clients.client_app:app")
    flwr run .
    # a real site (issue 5 wraps this as `fedray site`):
    flower-supernode --superlink HOST:PORT --node-config "data-path=/data/site.csv site-name=bank-a"

Node config (the only thing a site provides; see clients/site_data.py):
    data-path       local csv/jsonl/json/parquet (text + label columns) or .txt file
    site-name       optional display name in the server's table (default: file stem)
    partition-id, num-partitions   simulated sites only (set by Flower's simulation engine)
    num-threads     optional torch intra-op threads for this site (default: torch's choice)

Everything else (model config, tokenizer, task, hyperparameters) arrives from the server in the
message's ``config`` record (keys: orchestrator/contract/task.py).

Reply to a train message: ``arrays`` = the update ``w_local - w_received`` of the trainable
tensors only (LoRA adapters + head in LoRA mode), ``metrics`` = ``num-examples`` + train loss,
``site`` = {"name": ...}. Reply to an evaluate message: ``metrics`` on the local held-out split.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.site_data import SiteData, load_site_data
from clients.train import Encoded, LocalTrainConfig, encode, evaluate, local_train
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.contract.model import build, load_state, trainable_names
from orchestrator.contract.task import SiteTask

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[SiteTask, SiteData, torch.nn.Module]:
    """Parse the config, load this site's data and the received global weights."""
    threads = context.node_config.get("num-threads")
    if threads:
        torch.set_num_threads(int(threads))
    task = SiteTask.from_config(msg.content["config"])
    data = load_site_data(context.node_config, task)
    torch.manual_seed(task.seed)
    model = build(task.spec)
    load_state(model, to_numpy(msg.content["arrays"]))
    return task, data, model


def _encode(task: SiteTask, texts: list[str], labels: list[str] | None) -> Encoded:
    return encode(task.tokenizer, texts, task.max_length, labels, task.labels)


@app.train()
def train(msg: Message, context: Context) -> Message:
    task, data, model = _setup(msg, context)
    examples = _encode(task, data.train_texts, data.train_labels)
    keys = trainable_names(model)
    params = dict(model.named_parameters())
    received = {k: params[k].detach().clone() for k in keys}
    metrics = local_train(
        model,
        examples,
        LocalTrainConfig(
            task=task.spec.task,
            batch_size=task.batch_size,
            lr=task.lr,
            weight_decay=task.weight_decay,
            beta1=task.beta1,
            beta2=task.beta2,
            grad_clip=task.grad_clip,
            # Different data order each round, reproducible across runs.
            seed=task.seed + 1000 * task.server_round,
            steps=task.local_steps or None,
            epochs=task.local_epochs,
            proximal_mu=task.proximal_mu,
        ),
    )
    update = {k: (params[k].detach() - received[k]).numpy() for k in keys}
    reply = RecordDict(
        {
            "arrays": from_numpy(update),
            "metrics": MetricRecord({**metrics, "num-examples": len(examples)}),
            "site": ConfigRecord({"name": data.name}),
        }
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    task, data, model = _setup(msg, context)
    examples = _encode(task, data.eval_texts, data.eval_labels)
    metrics = evaluate(model, examples, task.spec.task, task.batch_size, len(task.labels))
    reply = RecordDict(
        {
            "metrics": MetricRecord({**metrics, "num-examples": len(examples)}),
            "site": ConfigRecord({"name": data.name}),
        }
    )
    return Message(content=reply, reply_to=msg)


__all__ = ["app"]
