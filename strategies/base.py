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
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from orchestrator.config.compression import CompressionConfig
from orchestrator.contract.arrays import Arrays, from_numpy, to_numpy
from orchestrator.contract.metrics import UPDATE_NORM, classification_metrics, perplexity
from orchestrator.contract.privacy import update_norm
from strategies.downlink import Downlink, with_compression
from strategies.fold import FoldSettings, StoredAggregator, server_stages
from strategies.pipeline import Aggregate, Aggregator, describe
from strategies.privacy import AdmitRound, CentralDP, central_dp, clip_shrink_hint
from strategies.replies import RoundReport, SiteReport
from strategies.running_sum import RunningSum, apply_sgd_from_sum
from strategies.sampling import Sampling, SiteSampler
from strategies.validation import (
    RejectedReply,
    decode_evaluate_reply,
    decode_train_reply,
    received_bytes,
)
from strategies.weighted_mean import MeanRule, WeightedMean

if TYPE_CHECKING:
    from typing import Self

    from orchestrator.config.federated import FederatedJob

log = logging.getLogger(__name__)


class DeltaStrategy(SiteSampler, Strategy):
    """FedAvg over updates weighted by ``num-examples``, then ``w + eta * mean_update``.

    Built by :meth:`from_config` from a job's sections, or directly with the same typed settings
    (``Sampling``, ``FoldSettings``, ``CentralDP``, ``CompressionConfig``). From the run:
    ``update_keys`` (None = learnt from the first reply), ``num_classes`` (evaluate replies'
    confusion matrices are num_classes^2; None = any square), ``work_dir`` (a stored round).
    """

    name = "fedavg"
    reply_extra_arrays: tuple[str, ...] = ()
    """Array records a train reply must hold besides the update (validated like it; SCAFFOLD's
    ``scaffold-delta-c``)."""
    step_scales_with_mean = True
    """The server step is proportional to the mean update (plain averaging, momentum); False for
    the adaptive optimizers, whose step is normalized by its own second moment."""
    rule_reads_round = False
    """The fold needs every reply of the round (a robust rule); True in ``RobustStrategy``."""
    weighted_by_key = "num-examples"
    arrayrecord_key = "arrays"
    configrecord_key = "config"

    def __init__(
        self,
        *,
        eta: float = 1.0,
        sampling: Sampling | None = None,
        fold: FoldSettings | None = None,
        central_dp: CentralDP | None = None,
        compression: CompressionConfig | None = None,
        base_once: bool = False,
        update_keys: Iterable[str] | None = None,
        num_classes: int | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        self.eta = eta
        self.init_sampling(sampling or Sampling())
        self.fold = fold or FoldSettings()
        self.update_keys: set[str] | None = set(update_keys) if update_keys is not None else None
        self.num_classes = num_classes
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "fedray"
        self.central_dp = central_dp
        self.reply_stages, self.aggregate_stages = server_stages(
            self.fold, central_dp, clip_on_arrival=not self.rule_reads_round
        )
        self._clip_hinted = False
        # The privacy ledger's budget check (set by the round loop); sees the actual sampling.
        self.admit_round: AdmitRound | None = None
        self.compression = compression or CompressionConfig()  # replies decoded in validation
        self.downlink = Downlink(self.compression.download, base_once)  # what goes to sites
        self._global: Arrays = {}
        self.last_train = RoundReport()
        self.last_evaluate = RoundReport()

    @classmethod
    def from_config(cls, job: FederatedJob, **run: Any) -> Self:
        """This strategy from ``job``'s sections (:meth:`config_kwargs`) and the run's
        keyword arguments (``update_keys``, ``num_classes``, ``work_dir``)."""
        return cls(**cls.config_kwargs(job), **run)

    @classmethod
    def config_kwargs(cls, job: FederatedJob) -> dict[str, Any]:
        """The constructor's settings from ``job``; subclasses add their own (FedProx's mu)."""
        return {
            "eta": job.strategy.eta,
            "sampling": Sampling.from_config(job),
            "fold": FoldSettings.from_config(job),
            "central_dp": central_dp(job),
            "compression": job.compression,
            "base_once": job.finetune.mode == "lora" and job.compression.lora_base_once,
        }

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

    # ---- Flower Strategy API -----------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = to_numpy(arrays)
        n_nodes = self.population or len(list(grid.get_node_ids()))
        self.num_nodes = n_nodes
        nodes = self.sample(grid, self._train_sample_size(max(n_nodes, self.min_available_sites)))
        if self.admit_round is not None:  # raises PrivacyBudgetExhausted: nothing is sent
            self.admit_round(server_round, len(nodes), self.last_population)
        if self.central_dp is not None:
            self.central_dp.begin_round(len(nodes))
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        for k, v in self.extra_train_config().items():
            cfg[k] = v
        log.info("round %d: training on %d site(s)", server_round, len(nodes))
        return self._messages(
            arrays, cfg, nodes, MessageType.TRAIN, grid, self.extra_train_records()
        )

    # ---- the round's stages (see strategies/pipeline.py) --------------------------------------

    def make_aggregator(self, server_round: int) -> Aggregator:
        """The fold stage of a round (a fresh one each round): streamed unless the weights or
        the clip need every reply (capped weights, a clip relative to the median norm)."""
        if self.fold.needs_round:
            return StoredAggregator(self.fold, MeanRule(self.fold.weighting), self.work_dir)
        uniform = self.fold.weighting == "uniform" or self.central_dp is not None
        return WeightedMean(self.fold.accumulate, uniform=uniform)

    def server_step_name(self) -> str:
        return f"{self.name}: w + {self.eta} * mean update"

    def pipeline(self) -> list[str]:
        """The stages a train round runs, for ``--dry-run``: after the fold, the weighting and
        how many attackers the rule tolerates of how many sampled sites."""
        steps = describe(
            self.reply_stages,
            self.make_aggregator(0),
            self.aggregate_stages,
            self.server_step_name(),
        )
        at = next(i for i, step in enumerate(steps) if step.startswith("fold: ")) + 1
        steps[at:at] = self.fold.describe()
        return with_compression(steps, self.compression)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not self._global:
            raise RuntimeError("aggregate_train before configure_train: no global arrays")
        agg = self.make_aggregator(server_round)
        metric_sums: dict[str, float] = {}
        notes: dict[str, str] = {}
        report = RoundReport()
        for msg in replies:
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
                continue
            if self.population is not None:
                reply.site = self.site_of(msg)
            agg.add(reply)
            if reply.note:
                notes[reply.site] = reply.note
            if self.update_keys is None:
                self.update_keys = set(reply.update)
            for k, v in reply.metrics.items():
                if k not in (self.weighted_by_key, UPDATE_NORM):  # the server's, not a site's
                    metric_sums[k] = metric_sums.get(k, 0.0) + reply.weight * v
            row = {**reply.metrics, UPDATE_NORM: norm}
            report.sites.append(
                SiteReport(reply.node_id, reply.site, True, row, bytes=reply.nbytes)
            )
        self.last_train = report
        total_weight = sum(s.metrics.get(self.weighted_by_key, 0.0) for s in report.sites)
        out = MetricRecord({k: v / total_weight for k, v in metric_sums.items()})
        out["sites-accepted"] = report.accepted
        out["sites-rejected"] = report.rejected
        out["bytes-received"] = report.bytes
        norms = [s.metrics[UPDATE_NORM] for s in report.sites if s.accepted]
        if norms:
            out[f"{UPDATE_NORM}-median"] = float(np.median(norms))
        self.hint_clip_shrink(server_round, norms)
        if agg.count < self.min_sites:
            log.warning(
                "round %d: %d accepted update(s) < min_sites=%d; the global model is unchanged",
                server_round,
                agg.count,
                self.min_sites,
            )
            return None, out
        try:
            aggregate = agg.result()
        except ValueError as e:  # e.g. Krum with too few accepted replies this round
            log.warning(
                "round %d: aggregation failed (%s); the global model is unchanged", server_round, e
            )
            return None, out
        for stage in self.aggregate_stages:
            aggregate = stage(aggregate, server_round)
        report.notes = {**notes, **aggregate.notes}
        new = self.server_update(self._global, aggregate.folded, server_round)
        return from_numpy(new), out

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

    @property
    def global_arrays(self) -> Arrays:
        """The global arrays the last ``configure_train`` sent."""
        return self._global

    def apply_sum(self, server_round: int, total: Arrays, count: int) -> ArrayRecord:
        """The server step on a float64 sum of updates the server never saw one by one, divided
        by ``count`` (secure aggregation: uniform weights; aggregate stages run on the sum)."""
        acc = RunningSum(np.float64)
        acc.sums = {k: np.ascontiguousarray(v, np.float64) for k, v in total.items()}
        acc.out_dtypes = {k: np.result_type(self._global[k].dtype, np.float32) for k in total}
        acc.total_weight, acc.count = float(count), count
        aggregate = Aggregate(acc)
        for stage in self.aggregate_stages:
            aggregate = stage(aggregate, server_round)
        return from_numpy(self.server_update(self._global, aggregate.folded, server_round))

    def configure_evaluate(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        num_sites: int | None = None,
    ) -> Iterable[Message]:
        """Evaluation messages to ``num_sites`` sampled sites (``None`` = every site)."""
        targets = self.sample_evaluate(server_round, grid, num_sites)
        return self.evaluate_messages(server_round, arrays, config, grid, targets)

    def evaluate_messages(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        targets: list[int],
    ) -> list[Message]:
        """Evaluation messages to ``targets`` (nodes; site pool: at most a pool of sites)."""
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        return self._messages(arrays, cfg, targets, MessageType.EVALUATE, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        report = RoundReport()
        sums: dict[str, float] = {}
        confusion: np.ndarray | None = None
        total = 0.0
        for msg in replies:
            size = received_bytes(msg)  # before decoding: a rejected reply was received too
            self.downlink.note(msg)
            site = self.site_of(msg)
            try:
                n, scalars, c = decode_evaluate_reply(msg, self.num_classes, self.weighted_by_key)
            except RejectedReply as e:
                log.warning("round %d: evaluation failed at site %s: %s", server_round, site, e)
                report.sites.append(
                    SiteReport(msg.metadata.src_node_id, site, False, reason=str(e), bytes=size)
                )
                continue
            if c is not None:
                if confusion is not None and confusion.shape != c.shape:
                    reason = f"confusion of {c.size} entries, others sent {confusion.size}"
                    report.sites.append(
                        SiteReport(msg.metadata.src_node_id, site, False, reason=reason, bytes=size)
                    )
                    continue
                confusion = c if confusion is None else confusion + c
                scalars.update(classification_metrics(c))
            ok = SiteReport(msg.metadata.src_node_id, site, True, scalars, bytes=size)
            report.sites.append(ok)
            total += n
            for k, v in scalars.items():
                if k != self.weighted_by_key:
                    sums[k] = sums.get(k, 0.0) + n * v
        self.last_evaluate = report
        if total <= 0:
            return None
        out = MetricRecord({k: v / total for k, v in sums.items()})
        if confusion is not None:
            # Pooled over all sites' held-out examples (a mean of per-site F1s is not an F1).
            out.update(classification_metrics(confusion))
        if "perplexity" in out and "eval-loss" in out:
            # exp of the pooled loss: a mean of per-site perplexities is not a perplexity
            # (by Jensen it overstates it), and it would disagree with the reported eval-loss.
            out["perplexity"] = perplexity(float(out["eval-loss"]))
        out[self.weighted_by_key] = int(total)
        return out

    def summary(self) -> None:
        """Flower's hook: log the strategy and its sampling."""
        s = f"sites_per_round={self.sites_per_round} fraction={self.fraction}"
        log.info("%s: eta=%s %s min_sites=%d", type(self).__name__, self.eta, s, self.min_sites)
