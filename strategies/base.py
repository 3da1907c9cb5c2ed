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
from orchestrator.contract.metrics import UPDATE_NORM
from strategies.downlink import Downlink, with_compression
from strategies.evaluation import SiteEvaluation
from strategies.fold import FoldSettings, StoredAggregator, server_stages
from strategies.outcome import TrainOutcome, TrainPlan
from strategies.pipeline import Aggregate, Aggregator, Reply, describe
from strategies.privacy import CentralDP, central_dp, clip_shrink_hint
from strategies.replies import RoundReport, SiteReport
from strategies.running_sum import RunningSum, apply_sgd_from_sum
from strategies.sampling import Sampling, SiteSampler
from strategies.validation import (
    RejectedReply,
    decode_train_reply,
    received_bytes,
)
from strategies.weighted_mean import MeanRule, WeightedMean

if TYPE_CHECKING:
    from typing import Self

    from orchestrator.config.federated import FederatedJob

log = logging.getLogger(__name__)


class DeltaStrategy(SiteSampler, SiteEvaluation, Strategy):
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
        self.compression = compression or CompressionConfig()  # replies decoded in validation
        self.downlink = Downlink(self.compression.download, base_once)  # what goes to sites
        self._global: Arrays = {}

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

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's view of :meth:`plan_train`."""
        return self.plan_train(server_round, arrays, config, grid).messages

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
                nbytes=size,
            )
            norm = reply.norm  # as sent: before a stage clips it
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

    def summary(self) -> None:
        """Flower's hook: log the strategy and its sampling."""
        s = f"sites_per_round={self.sites_per_round} fraction={self.fraction}"
        log.info("%s: eta=%s %s min_sites=%d", type(self).__name__, self.eta, s, self.min_sites)
