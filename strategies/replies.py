"""Replies as they arrive and what the server table shows of them: :func:`stream_replies`
yields each reply as the grid delivers it; :class:`RoundReport` / :class:`SiteReport` record
what the strategy made of each."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


@dataclass
class SiteReport:
    """One site's reply in a round, as the server table shows it."""

    node_id: int
    site: str
    accepted: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    bytes: int = 0


@dataclass
class RoundReport:
    """What happened in the last train or evaluate step."""

    sites: list[SiteReport] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    """Per-site notes of the fold stage (a robust rule's ``discarded`` / ``trimmed`` ...)."""

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.sites)

    @property
    def rejected(self) -> int:
        return sum(not s.accepted for s in self.sites)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sites)


POLL_MIN_S, POLL_MAX_S = 0.05, 0.5
"""Interval between pulls for replies: from 50 ms, x1.5 per empty pull, up to 0.5 s."""


def stream_replies(grid: Grid, messages: Iterable[Message], timeout: float) -> Iterator[Message]:
    """Push ``messages`` and yield each reply as soon as the grid has it (until ``timeout``).

    ``Grid.send_and_receive`` returns only once every reply is in and keeps them all; yielding
    lets the strategy fold and drop each reply on arrival.
    """
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    wait = POLL_MIN_S
    while pending and time.monotonic() < deadline:
        # Pop from the pulled batch so a reply already folded is not kept alive by the list.
        batch = list(grid.pull_messages(list(pending)))
        # Each empty pull is a request the SuperLink serves: back off while sites are busy
        # (real sites take seconds to minutes), start fast again once a reply came.
        wait = POLL_MIN_S if batch else min(POLL_MAX_S, wait * 1.5)
        if not batch:
            time.sleep(wait)
        batch.reverse()
        while batch:
            reply = batch.pop()
            pending.discard(reply.metadata.reply_to_message_id)
            yield reply
    if pending:
        log.warning("round timeout after %.0f s: %d site(s) did not reply", timeout, len(pending))
