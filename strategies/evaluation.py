"""Evaluation rounds: the sampled sites evaluate the global model and the server pools what
they report (example-weighted scalars; classification metrics from the summed confusion
matrix, since a mean of per-site F1s is not an F1).

A mixin of :class:`strategies.base.DeltaStrategy`, like :mod:`strategies.sampling`: it uses the
strategy's sampling and routing (``_messages``, ``site_of``), its ``downlink`` (which learns from
every reply whether a site holds the LoRA base), ``num_classes`` and ``weighted_by_key``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from orchestrator.contract.metrics import classification_metrics, perplexity
from strategies.downlink import Downlink
from strategies.outcome import EvaluateOutcome, Plan
from strategies.replies import RoundReport, SiteReport
from strategies.validation import RejectedReply, decode_evaluate_reply, received_bytes

log = logging.getLogger(__name__)


class PooledConfusion:
    """The sum of the sites' confusion matrices; a reply whose matrix has another shape than
    the first one's is rejected."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None

    def add(self, c: np.ndarray) -> None:
        if self.total is not None and self.total.shape != c.shape:
            raise RejectedReply(f"confusion of {c.size} entries, others sent {self.total.size}")
        self.total = c if self.total is None else self.total + c


class SiteEvaluation:
    """Evaluation messages out, pooled metrics back (see the module doc)."""

    num_classes: int | None
    weighted_by_key: str
    downlink: Downlink

    # ---- evaluation: plan -> (the loop sends) -> fold ----------------------------------------

    def plan_evaluate(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        targets: list[int],
    ) -> Plan:
        """Evaluation messages to ``targets`` (from :meth:`sample_evaluate`; with a site pool,
        at most a pool of sites at once)."""
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        msgs = self._messages(arrays, cfg, targets, MessageType.EVALUATE, grid)
        return Plan(msgs, self._assignment())

    def configure_evaluate(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        num_sites: int | None = None,
    ) -> Iterable[Message]:
        """Flower's view: evaluation messages to ``num_sites`` sampled sites (None = all)."""
        targets = self.sample_evaluate(server_round, grid, num_sites)
        return self.plan_evaluate(server_round, arrays, config, grid, targets).messages

    def fold_evaluate(self, server_round: int, replies: Iterable[Message]) -> EvaluateOutcome:
        """Pool the sites' evaluation: example-weighted scalars, and classification metrics
        from the summed confusion matrix (a mean of per-site F1s is not an F1)."""
        report = RoundReport()
        sums: dict[str, float] = {}
        pooled = PooledConfusion()
        total = 0.0
        for msg in replies:
            row, n = self._accept_evaluate(server_round, msg, pooled)
            report.sites.append(row)
            if not row.accepted:
                continue
            total += n
            for k, v in row.metrics.items():
                if k != self.weighted_by_key:
                    sums[k] = sums.get(k, 0.0) + n * v
        if total <= 0:
            return EvaluateOutcome(None, report)
        out: dict[str, Any] = {k: v / total for k, v in sums.items()}
        if pooled.total is not None:
            out.update(classification_metrics(pooled.total))
        if "perplexity" in out and "eval-loss" in out:
            # exp of the pooled loss: a mean of per-site perplexities is not a perplexity
            # (by Jensen it overstates it), and it would disagree with the reported eval-loss.
            out["perplexity"] = perplexity(float(out["eval-loss"]))
        out[self.weighted_by_key] = int(total)
        return EvaluateOutcome(out, report)

    def _accept_evaluate(
        self, server_round: int, msg: Message, pooled: PooledConfusion
    ) -> tuple[SiteReport, float]:
        """One evaluation reply as a site row, and its example count (0 when rejected)."""
        size = received_bytes(msg)  # before decoding: a rejected reply was received too
        self.downlink.note(msg)
        node, site = msg.metadata.src_node_id, self.site_of(msg)
        try:
            n, scalars, c = decode_evaluate_reply(msg, self.num_classes, self.weighted_by_key)
            if c is not None:
                pooled.add(c)
                scalars.update(classification_metrics(c))
        except RejectedReply as e:
            log.warning("round %d: evaluation failed at site %s: %s", server_round, site, e)
            return SiteReport(node, site, False, reason=str(e), bytes=size), 0.0
        return SiteReport(node, site, True, scalars, bytes=size), n

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Flower's view of :meth:`fold_evaluate`."""
        metrics = self.fold_evaluate(server_round, replies).metrics
        return None if metrics is None else MetricRecord(metrics)
