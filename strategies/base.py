"""``DeltaStrategy``: the shared machinery of fedray's strategies (a Flower ``Strategy``).

Sites reply with weight *updates* (``w_site - w_global`` of the trainable tensors). The strategy
keeps the global arrays it sent in ``configure_train``, folds each valid reply into a running
weighted sum as it is iterated (so memory holds one update-sized sum, not K replies), then lets
the subclass turn the mean update into the next global model (:meth:`server_update`).

It runs under Flower's stock ``Strategy.start`` (a plain ``ServerApp``), and streams for real
when fed by :func:`stream_replies`, which yields replies as the grid delivers them.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from orchestrator.config.compression import CompressionConfig
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.contract.metrics import UPDATE_NORM, classification_metrics, perplexity
from orchestrator.contract.privacy import update_norm
from strategies.aggregators import NormClipStage, RuleConfig, StoredAggregator
from strategies.downlink import Downlink, with_compression
from strategies.math import Arrays, RunningSum, apply_sgd_from_sum
from strategies.outcome import EvaluateOutcome, Plan, TrainOutcome, TrainPlan
from strategies.pipeline import (
    Aggregate,
    AggregateStage,
    Aggregator,
    Reply,
    ReplyStage,
    WeightedMean,
    describe,
)
from strategies.privacy import CentralDP, clip_shrink_hint
from strategies.replies import RoundReport, SiteReport
from strategies.sampling import SiteSampler
from strategies.validation import (
    RejectedReply,
    decode_evaluate_reply,
    decode_train_reply,
    received_bytes,
)

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


class DeltaStrategy(SiteSampler, Strategy):
    """FedAvg over updates weighted by ``num-examples``, then ``w + eta * mean_update``."""

    name = "fedavg"
    reply_extra_arrays: tuple[str, ...] = ()
    """Array records a train reply must hold besides the update (validated like it; SCAFFOLD's
    ``scaffold-delta-c``)."""
    step_scales_with_mean = True
    """The server step is proportional to the mean update (plain averaging, momentum); False for
    the adaptive optimizers, whose step is normalized by its own second moment."""

    def __init__(
        self,
        *,
        eta: float = 1.0,
        sites_per_round: int | None = None,
        fraction: float = 1.0,
        min_sites: int = 1,
        min_available_sites: int = 1,
        update_keys: Iterable[str] | None = None,
        seed: int = 0,
        wait_for_sites_s: float = 600.0,
        rejoin_wait_s: float = 0.0,
        accumulate: str = "float64",
        num_classes: int | None = None,
        rule: RuleConfig | None = None,
        work_dir: str | Path | None = None,
        reply_stages: Sequence[ReplyStage] = (),
        aggregate_stages: Sequence[AggregateStage] = (),
        central_dp: CentralDP | None = None,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        compression: CompressionConfig | None = None,
        base_once: bool = False,
    ) -> None:
        self.eta = eta
        self.sites_per_round = sites_per_round
        self.fraction = fraction
        self.min_sites = min_sites
        self.min_available_sites = max(min_available_sites, min_sites)
        # None = learn them from the first accepted reply (stock ServerApp use).
        self.update_keys: set[str] | None = set(update_keys) if update_keys is not None else None
        self.seed = seed
        self.rng = random.Random(seed)
        self.wait_for_sites_s = wait_for_sites_s
        self.rejoin_wait_s = rejoin_wait_s
        self.accumulate = np.dtype(accumulate)  # of the running sum; see RunningSum
        # Evaluate replies' confusion matrices must be num_classes^2 (None = any square).
        self.num_classes = num_classes
        self.rule = rule or RuleConfig()
        # Where rules that keep the round's replies on disk put them (the run directory).
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "fedray"
        self.reply_stages = list(reply_stages)
        if self.rule.clip_update_norm and not self.rule.clip_relative and self.rule.rule == "mean":
            # A fixed bound needs no other reply: clip each reply as it streams in.
            self.reply_stages.append(NormClipStage(self.rule.clip_update_norm))
        self.aggregate_stages = list(aggregate_stages)
        # Central DP: clip each reply as it arrives, noise the sum (strategies/privacy.py).
        self.central_dp = central_dp
        self._clip_hinted = False
        if central_dp is not None:
            self.reply_stages.append(central_dp.clip_stage)
            self.aggregate_stages.insert(0, central_dp.noise_stage)
        self._federation_seen = False
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.compression = compression or CompressionConfig()  # replies decoded in validation
        self.downlink = Downlink(self.compression.download, base_once)  # what goes to sites
        self._global: Arrays = {}
        self.num_nodes = 0
        """Sites in the federation when the last train round was configured (connected nodes;
        with a site pool, the population)."""
        self.population: int | None = None
        """Set by :meth:`use_site_pool`: sites ``0..population-1`` take turns on the grid's
        nodes (a simulation pool); None = every node is one site."""
        self.assigned: dict[int, str] = {}
        """With a site pool: node id -> the site its message in flight is for."""

    # ---- the server step (subclasses override) ---------------------------------------------

    def server_update(self, global_: Arrays, acc: RunningSum, server_round: int) -> Arrays:
        """The next global arrays from the folded updates (``acc.mean()`` is the mean update)."""
        return apply_sgd_from_sum(global_, acc, self.eta)

    def extra_train_config(self) -> dict[str, Any]:
        """Entries added to every train message's config (FedProx sends ``proximal-mu``)."""
        return {}

    def extra_train_records(self) -> dict[str, ArrayRecord]:
        """Array records added to every train message (SCAFFOLD sends its control variate)."""
        return {}

    # ---- state, for checkpoints and resume ---------------------------------------------------

    def state_arrays(self) -> Arrays:
        """Optimizer state tensors (FedAdam's m and v); empty for FedAvg."""
        return {}

    def state_meta(self) -> dict[str, Any]:
        """JSON-able state: the sampling RNG (so a resumed run samples the same sites)."""
        version, internal, gauss = self.rng.getstate()
        meta: dict[str, Any] = {"strategy": self.name, "rng": [version, list(internal), gauss]}
        if self.central_dp is not None:
            meta["central_dp"] = self.central_dp.state_meta()
        return meta

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        if meta.get("strategy") != self.name:
            raise ValueError(
                f"checkpoint was written by strategy {meta.get('strategy')!r}, not {self.name!r}"
            )
        version, internal, gauss = meta["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        if self.central_dp is not None:
            self.central_dp.load_state(meta["central_dp"])

    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        targets: list[int],
        kind: str,
        grid: Grid,
        extra: dict[str, ArrayRecord] | None = None,
    ) -> list[Message]:
        """One message per target: a node id, or with a site pool a site id (routed to a node)."""
        keys = (self.arrayrecord_key, self.configrecord_key)
        nodes, records = self.route(targets, grid)
        return self.downlink.messages(
            arrays, config, self.update_keys, nodes, kind, keys, extra, records
        )

    # ---- a train round: plan -> (the loop sends) -> fold ------------------------------------

    def plan_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> TrainPlan:
        """Sample the round's sites and build their train messages; nothing is sent, so the
        loop can still refuse the round (the privacy budget) from the returned values."""
        self._global = to_numpy(arrays)
        n_nodes = self.population or len(list(grid.get_node_ids()))
        self.num_nodes = n_nodes
        size = self._train_sample_size(max(n_nodes, self.min_available_sites))
        targets, population = self.draw(grid, size)
        if self.central_dp is not None:
            self.central_dp.begin_round(len(targets))
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        for k, v in self.extra_train_config().items():
            cfg[k] = v
        log.info("round %d: training on %d site(s)", server_round, len(targets))
        msgs = self._messages(
            arrays, cfg, targets, MessageType.TRAIN, grid, self.extra_train_records()
        )
        return TrainPlan(
            msgs,
            self._assignment(),
            population=population,
            update_keys=sorted(self.update_keys or self._global),
        )

    def _assignment(self) -> dict[int, str]:
        return dict(self.assigned) if self.population is not None else {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's view of :meth:`plan_train`."""
        return self.plan_train(server_round, arrays, config, grid).messages

    # ---- the round's stages (see strategies/pipeline.py) --------------------------------------

    def make_aggregator(self, server_round: int) -> Aggregator:
        """The fold stage of a round (a fresh one each round): streamed unless the settings
        need every reply (capped weights, median-relative clipping, a robust rule)."""
        if (
            self.rule.rule != "mean"
            or self.rule.weighting == "capped"
            or (self.rule.clip_update_norm and self.rule.clip_relative)
        ):
            return StoredAggregator(self.rule, self.work_dir, center=self.center())
        uniform = self.rule.weighting == "uniform" or self.central_dp is not None
        return WeightedMean(self.accumulate, uniform=uniform)

    def center(self) -> Arrays | None:
        """Centered clipping's starting point (RobustStrategy keeps the last aggregate)."""
        return None

    def server_step_name(self) -> str:
        return f"{self.name}: w + {self.eta} * mean update"

    def pipeline(self) -> list[str]:
        """The stages a train round runs, for ``--dry-run``."""
        steps = describe(
            self.reply_stages,
            self.make_aggregator(0),
            self.aggregate_stages,
            self.server_step_name(),
        )
        return with_compression(steps, self.compression)

    def fold_train(self, server_round: int, replies: Iterable[Message]) -> TrainOutcome:
        """Decode, validate and fold each reply as it arrives, then take the server step."""
        if not self._global:
            raise RuntimeError("fold_train before plan_train: no global arrays")
        agg = self.make_aggregator(server_round)
        report = RoundReport()
        metric_sums: dict[str, float] = {}
        notes: dict[str, str] = {}
        for msg in replies:
            reply = self._accept_train(server_round, msg, report)
            if reply is None:
                continue
            agg.add(reply)
            if reply.note:
                notes[reply.site] = reply.note
            if self.update_keys is None:
                self.update_keys = set(reply.update)
            for k, v in reply.metrics.items():
                if k not in (self.weighted_by_key, UPDATE_NORM):  # the server's, not a site's
                    metric_sums[k] = metric_sums.get(k, 0.0) + reply.weight * v
        metrics = self._train_metrics(server_round, report, metric_sums)
        new = self._server_step(server_round, agg, report, notes)
        privacy = self.central_dp.round_columns() if self.central_dp is not None else {}
        return TrainOutcome(new, metrics, report, privacy)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's view of :meth:`fold_train`."""
        return self.fold_train(server_round, replies).flower()

    def _accept_train(self, server_round: int, msg: Message, report: RoundReport) -> Reply | None:
        """One reply through decode, validation and the reply stages; its row goes to
        ``report`` either way (None = rejected)."""
        size = received_bytes(msg)  # before decoding: a rejected reply was received too
        self.downlink.note(msg)
        try:
            reply = decode_train_reply(
                msg,
                self.update_keys,
                self._global,
                self.weighted_by_key,
                self.reply_extra_arrays,
                compression=self.compression,
            )
            norm = update_norm(reply.update)  # as sent: before a stage clips it
            for stage in self.reply_stages:
                reply = stage(reply, server_round)
        except RejectedReply as e:
            site = self.site_of(msg)
            log.warning("round %d: rejected reply from site %s: %s", server_round, site, e)
            report.sites.append(
                SiteReport(msg.metadata.src_node_id, site, False, reason=str(e), bytes=size)
            )
            return None
        if self.population is not None:
            reply.site = self.site_of(msg)
        row = {**reply.metrics, UPDATE_NORM: norm}
        report.sites.append(SiteReport(reply.node_id, reply.site, True, row, bytes=reply.nbytes))
        return reply

    def _train_metrics(
        self, server_round: int, report: RoundReport, metric_sums: dict[str, float]
    ) -> dict[str, Any]:
        """The round's pooled train metrics (weighted like the fold) and its counters."""
        total_weight = sum(s.metrics.get(self.weighted_by_key, 0.0) for s in report.sites)
        out: dict[str, Any] = {k: v / total_weight for k, v in metric_sums.items()}
        out["sites-accepted"] = report.accepted
        out["sites-rejected"] = report.rejected
        out["bytes-received"] = report.bytes
        norms = [s.metrics[UPDATE_NORM] for s in report.sites if s.accepted]
        if norms:
            out[f"{UPDATE_NORM}-median"] = float(np.median(norms))
        self.hint_clip_shrink(server_round, norms)
        return out

    def _server_step(
        self, server_round: int, agg: Aggregator, report: RoundReport, notes: dict[str, str]
    ) -> ArrayRecord | None:
        """The aggregate stages and the server step (None = the model stays as it is)."""
        if agg.count < self.min_sites:
            log.warning(
                "round %d: %d accepted update(s) < min_sites=%d; the global model is unchanged",
                server_round,
                agg.count,
                self.min_sites,
            )
            return None
        try:
            aggregate = agg.result()
        except ValueError as e:  # e.g. Krum with too few accepted replies this round
            log.warning(
                "round %d: aggregation failed (%s); the global model is unchanged", server_round, e
            )
            return None
        for stage in self.aggregate_stages:
            aggregate = stage(aggregate, server_round)
        report.notes = {**notes, **aggregate.notes}
        return from_numpy(self.server_update(self._global, aggregate.folded, server_round))

    def hint_clip_shrink(self, server_round: int, norms: list[float]) -> None:
        """Warn once per run when a fixed DP clip shortens most updates of a plain-averaging
        strategy (:func:`strategies.privacy.clip_shrink_hint` says why it matters)."""
        dp = self.central_dp
        if dp is None or dp.adaptive or not self.step_scales_with_mean or self._clip_hinted:
            return
        hint = clip_shrink_hint(dp.round_clip, norms, self.eta)
        if hint:
            log.warning("round %d: %s", server_round, hint)
            self._clip_hinted = True

    def apply_sum(self, server_round: int, total: Arrays, count: int) -> ArrayRecord:
        """The server step on a float64 sum of updates the server never saw one by one, divided
        by ``count`` (secure aggregation: uniform weights; aggregate stages run on the sum)."""
        out_dtypes = {k: np.result_type(self._global[k].dtype, np.float32) for k in total}
        aggregate = Aggregate(RunningSum.of_sum(total, count, out_dtypes))
        for stage in self.aggregate_stages:
            aggregate = stage(aggregate, server_round)
        return from_numpy(self.server_update(self._global, aggregate.folded, server_round))

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

    def summary(self) -> None:
        log.info(
            "%s: eta=%s sites_per_round=%s fraction=%s min_sites=%d",
            type(self).__name__,
            self.eta,
            self.sites_per_round,
            self.fraction,
            self.min_sites,
        )
