"""``LocalGrid``: a Flower ``Grid`` that runs a ClientApp in this process, one message at a time.

No Ray, no SuperLink: for fast tests, debugging a ClientApp with a debugger, and measuring the
server loop without the simulation engine. Each node is a ``Context`` with its own node config
(e.g. ``{"partition-id": 0, "num-partitions": 4}`` or ``{"data-path": ...}``). Replies are
produced lazily, one per ``pull_messages`` call, so a streaming strategy sees them one by one.
``intercept`` may rewrite a reply before the server sees it (tests use it to corrupt replies).

:meth:`LocalGrid.simulated` gives N nodes the node configs Flower's simulation engine gives N
SuperNodes; with fewer nodes than ``federation.num_sites`` and ``run_federated(...,
site_pool=True)`` that is a simulation pool (orchestrator/contract/site_pool.py).
:attr:`LocalGrid.overlaps` counts messages pushed to a node that still had one pending (a pool
must never do that).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def ensure_task_identity(run_id: int = 1) -> None:
    """Messages take run/node/task ids from a process-wide identity that Flower's runtimes set.
    Outside them (this grid, unit tests) give it a server identity once."""
    for attr, value in (("run_id", run_id), ("node_id", 0), ("task_id", 1)):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, value)


class LocalGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[dict[str, Any]],
        intercept: Callable[[Message], Message] | None = None,
        run_id: int = 1,
    ) -> None:
        ensure_task_identity(run_id)
        self.client_app = client_app
        self.intercept = intercept
        self._run = Run.create_empty(run_id)
        self.contexts = {
            i + 1: Context(
                run_id=run_id,
                node_id=i + 1,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config={},
            )
            for i, cfg in enumerate(node_configs)
        }
        self._pending: dict[str, Message] = {}
        self.messages_handled = 0
        self.overlaps = 0
        self._busy: dict[int, int] = {}  # node -> its pending messages
        """Messages pushed to a node that still had an unanswered one."""
        self.sent_to: list[tuple[int, str, Message]] = []
        """``(node, message type, message)`` of every message pushed, in order (tests)."""
        self.record_sent = False

    @classmethod
    def simulated(
        cls,
        client_app: ClientApp,
        num_nodes: int,
        intercept: Callable[[Message], Message] | None = None,
    ) -> LocalGrid:
        """``num_nodes`` simulated nodes, configured as Flower's engine configures SuperNodes."""
        configs = [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        return cls(client_app, configs, intercept)

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self._run = Run.create_empty(run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            dst = msg.metadata.dst_node_id
            self.overlaps += self._busy.get(dst, 0) > 0
            self._busy[dst] = self._busy.get(dst, 0) + 1
            if self.record_sent:
                self.sent_to.append((dst, msg.metadata.message_type, msg))
            msg_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = msg_id
            self._pending[msg_id] = msg
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run the ClientApp for the first pending message among ``message_ids``."""
        for msg_id in message_ids:
            msg = self._pending.pop(msg_id, None)
            if msg is None:
                continue
            ctx = self.contexts[msg.metadata.dst_node_id]
            self._busy[msg.metadata.dst_node_id] -= 1
            try:
                reply = self.client_app(msg, ctx)
            except Exception as e:  # a site failing must not stop the round (as in Flower)
                reply = Message(
                    error=Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg
                )
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.messages_handled += 1
            return [self.intercept(reply) if self.intercept else reply]
        return []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while ids and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(ids))
            for r in got:
                ids.remove(r.metadata.reply_to_message_id)
            out.extend(got)
        return out
