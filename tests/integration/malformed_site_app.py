"""Test-only ClientApp: fedray's own ClientApp, except that the site named ``mallory`` corrupts its
train replies (garbage bytes in place of one array's ``.npy`` payload).

A federation submitted with ``clientapp = "tests.integration.malformed_site_app:app"`` (see
``ServerSession.run(clientapp=...)``) sends this component to every site; only the SuperNode whose
node config says ``site-name='mallory'`` misbehaves. Importable at the sites because fedray's
source directory is on the Flower processes' PYTHONPATH (``processes.flower_env``).
"""

from __future__ import annotations

from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from clients import client_app as honest
from orchestrator.contract.messages import ARRAYS

MALFORMED_SITE = "mallory"
GARBAGE = b"\x93NUMPY\x01\x00not an npy header" + bytes(range(256))

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    if context.node_config.get("site-name") == MALFORMED_SITE:
        record = reply.content[ARRAYS]
        name = next(iter(record))
        a = record[name]
        record[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=GARBAGE)
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest.evaluate_(msg, context)
