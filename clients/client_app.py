"""The site entry point: a Flower ClientApp that fine-tunes locally and replies with the update.

    # stock Flower (pyproject [tool.flwr.app.components] clientapp = "clients.client_app:app")
    flwr run .
    # a real site (what `fedray site` wraps):
    flower-supernode --superlink HOST:PORT --node-config "data-path=/data/site.csv site-name=bank-a"

Node config (the only thing a site provides; see clients/site_data.py):
    data-path       local csv/jsonl/json/parquet (text + label columns) or .txt file
    site-name       optional display name in the server's table (default: file stem)
    partition-id, num-partitions   simulated sites only (set by Flower's simulation engine);
                    on a pool of simulation nodes the message's ``sim-site`` record names the
                    site instead (orchestrator/contract/site_pool.py; a real site refuses it)
    state-dir       optional directory for this site's persistent state across rounds and
                    restarts (clients/site_state.py; default: kept in memory only)
    num-threads     optional torch intra-op threads for this site (default: torch's choice)
    device          optional torch device (cpu, cuda, cuda:1); default: the site's GPU if it
                    has one (under simulation: the share federation.gpus_per_site reserved)

Everything else (model config, tokenizer, task, hyperparameters) arrives from the server in the
message's ``config`` record (orchestrator/contract/task.py); the reply layout is in
orchestrator/contract/messages.py. What a site does with each message is in
clients/site_handlers.py.

This module imports Flower only: at a site ``fedray site`` started, Flower starts a process for
every message, and the handlers run in the site's warm worker (clients/site_worker.py), which
imported torch and transformers once. Everywhere else (simulation, a plain SuperNode, tests)
the handlers run here, imported on the first message.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import site_worker

app = ClientApp()


def _handle(name: str, msg: Message, context: Context) -> Message:
    if site_worker.enabled() and (reply := site_worker.relay(name, msg, context)) is not None:
        return reply
    handler = site_worker.handlers()[name]  # imports torch and transformers on first use
    if name in site_worker.TIMED:
        return handler(msg, context, overhead=site_worker.message_overhead())
    return handler(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle("train", msg, context)


@app.train("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return _handle("secagg_share", msg, context)


@app.train("secagg_mask")
def secagg_mask(msg: Message, context: Context) -> Message:
    return _handle("secagg_mask", msg, context)


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _handle("secagg_unmask", msg, context)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    return _handle("evaluate", msg, context)


__all__ = ["app"]
