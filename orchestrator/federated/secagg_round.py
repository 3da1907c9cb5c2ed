"""A train round under secure aggregation: four exchanges with the sampled sites, then the
strategy's server step on the unmasked *sum* (the server never holds one site's update).

Message layout: ``orchestrator/contract/secagg.py``; protocol: ``orchestrator/secagg/``. A site
that fails or stays silent at a step drops out; the protocol recovers it while at least
``threshold`` sites remain, else the round is skipped and the model is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from orchestrator.config.privacy import PrivacyConfig
from orchestrator.contract import secagg as wire
from orchestrator.contract.arrays import to_numpy
from orchestrator.contract.metrics import NUM_EXAMPLES
from orchestrator.secagg import SecAggError, ServerRound, new_params, site_ids
from orchestrator.secagg.dp import effective_multiplier
from orchestrator.secagg.protocol import RoundParams
from strategies import DeltaStrategy, stream_replies
from strategies.outcome import TrainOutcome, TrainPlan
from strategies.replies import RoundReport, SiteReport
from strategies.validation import RejectedReply, scalar_metrics, site_name

log = logging.getLogger(__name__)


def payload_bytes(payload: Mapping[str, Any]) -> int:
    """Approximate wire size of a payload (bytes as is, 8 per number)."""
    n = 0
    for v in payload.values():
        items = v if isinstance(v, list) else [v]
        n += sum(len(x) if isinstance(x, bytes) else 8 for x in items)
    return n


def describe(privacy: PrivacyConfig, sites: int) -> list[str]:
    """The server side of a secure round, for ``--dry-run``."""
    p = new_params(sites, privacy.secagg_threshold, privacy.secagg_neighbours, 1.0, 1)
    k, t = p.degree, p.threshold
    graph = "all pairs (SecAgg)" if k == sites - 1 else f"{k} neighbours each (SecAgg+)"
    return [
        f"secure aggregation: {sites} site(s), {graph}, threshold {t}: keys -> encrypted "
        "shares -> masked updates (HMAC-checked, summed mod 2^32) -> unmask",
        f"sum: exact sum of the survivors' quantized updates (< {t} left: round skipped)",
    ]


class SecureTrain:
    """Runs one secure train round for a strategy on a grid (``rounds.FederatedRun.train``)."""

    def __init__(
        self, grid: Grid, strategy: DeltaStrategy, privacy: PrivacyConfig, timeout: float
    ) -> None:
        self.grid, self.strategy, self.privacy, self.timeout = grid, strategy, privacy, timeout

    def train(self, server_round: int, plan: TrainPlan, arrays: ArrayRecord) -> TrainOutcome:
        """Run the planned round; the outcome's model is None when the protocol skipped it."""
        msgs, nodes = plan.messages, plan.nodes
        self.sids = site_ids(nodes)
        self.node_of = {sid: node for node, sid in self.sids.items()}
        self.report: dict[int, SiteReport] = {}
        self.bytes_up = 0
        global_ = to_numpy(arrays)
        like = {k: global_[k] for k in plan.update_keys}
        p = self.privacy
        try:
            params = new_params(
                len(nodes),
                p.secagg_threshold,
                p.secagg_neighbours,
                p.secagg_clip_range,
                sum(v.size for v in like.values()),
            )
            self.threshold = params.threshold
            new = self._protocol(server_round, msgs, params, like)
            reason = ""
        except SecAggError as e:  # RoundAborted, or parameters this round's sites cannot meet
            log.warning("round %d: secure aggregation skipped the round: %s", server_round, e)
            new, reason = None, str(e)
        report = RoundReport(sites=list(self.report.values()))
        accepted = [r for r in self.report.values() if r.accepted]
        metrics: dict[str, Any] = {}
        for r in accepted:
            for k, v in r.metrics.items():
                if k != NUM_EXAMPLES:
                    metrics[k] = metrics.get(k, 0.0) + v / len(accepted)
        metrics.update(
            {
                "sites-accepted": len(accepted),
                "sites-rejected": len(self.report) - len(accepted),
                "bytes-received": self.bytes_up,
            }
        )
        if p.mode == "central" and new is not None:
            # What the sum actually carries (>= privacy.noise_multiplier, which is charged).
            metrics["noise-multiplier-effective"] = effective_multiplier(
                p.noise_multiplier, self.threshold, len(accepted)
            )
        return TrainOutcome(new, metrics, report, skip_reason=reason)

    # ---- the four exchanges ---------------------------------------------------------------

    def _drop(self, node: int, name: str, reason: str) -> None:
        r = self.report.get(node)
        if r is None:
            self.report[node] = SiteReport(node, name, False, reason=reason)
        elif r.accepted or not r.reason:
            r.accepted, r.reason = False, reason

    def _requests(self, step: str, requests: dict[int, dict[str, Any]]) -> list[Message]:
        return [
            Message(
                content=RecordDict({wire.SECAGG: wire.to_record(req)}),
                dst_node_id=self.node_of[sid],
                message_type=step,
            )
            for sid, req in requests.items()
        ]

    def _exchange(
        self, step: str, msgs: list[Message], handle: Callable[[int, Message], None]
    ) -> None:
        """Send ``msgs``, hand each first reply of a site of the round to ``handle``; a site
        that fails there or stays silent drops out (with the reason in its row)."""
        asked = {self.sids[m.metadata.dst_node_id] for m in msgs}
        answered: set[int] = set()
        for msg in stream_replies(self.grid, msgs, self.timeout):
            node = msg.metadata.src_node_id
            sid = self.sids.get(node)
            if sid is None or sid not in asked or sid in answered:
                continue  # not a site of this round, or a second reply
            answered.add(sid)
            try:
                handle(sid, msg)
            except SecAggError as e:
                self._drop(node, site_name(msg), f"secagg {step}: {e}")
        for sid in asked - answered:
            self._drop(self.node_of[sid], str(self.node_of[sid]), f"no reply to {step}")

    def _protocol(
        self,
        server_round: int,
        msgs: list[Message],
        params: RoundParams,
        like: dict[str, np.ndarray],
    ) -> ArrayRecord:
        server = ServerRound(params)
        for m in msgs:  # the train message's content is shared: give each site its own copy
            sid = self.sids[m.metadata.dst_node_id]
            m.content = RecordDict({**m.content, wire.SECAGG: wire.to_record(server.setup(sid))})

        def keys(sid: int, msg: Message) -> None:
            payload = wire.payload_of(msg)
            try:
                metrics = msg.content.get("metrics")
                if not isinstance(metrics, MetricRecord) or NUM_EXAMPLES not in metrics:
                    raise RejectedReply("reply lacks its metrics")
                scalars = scalar_metrics(metrics)
            except RejectedReply as e:
                raise SecAggError(str(e)) from e
            server.receive_keys(sid, payload)
            self.bytes_up += payload_bytes(payload)
            node = msg.metadata.src_node_id
            self.report[node] = SiteReport(node, site_name(msg), True, scalars)

        self._exchange("train", msgs, keys)
        share = self._requests(wire.SHARE, server.share_requests())
        self._exchange(wire.SHARE, share, self._into(server.receive_shares))

        def masked(sid: int, msg: Message) -> None:
            payload = wire.payload_of(msg)  # first: it turns an error reply into a dropout
            y = wire.masked_of(msg)
            server.receive_masked(sid, y, payload)
            self.bytes_up += y.nbytes
            self.report[msg.metadata.src_node_id].bytes = y.nbytes

        self._exchange(wire.MASK, self._requests(wire.MASK, server.mask_requests()), masked)
        unmask = self._requests(wire.UNMASK, server.unmask_requests())
        self._exchange(wire.UNMASK, unmask, self._into(server.receive_unmask))
        # Sites whose masked input is in the sum count as accepted, even if silent at unmask.
        for sid, node in self.node_of.items():
            r = self.report.get(node)
            if r is not None and sid in server.masked:
                r.accepted = True
        for reporter, senders in server.failed.items():
            log.warning(
                "round %d: site %s could not decrypt shares from %s (tampered?)",
                server_round,
                self.node_of[reporter],
                [self.node_of[u] for u in senders],
            )
        total, count = server.result()
        # DP-FedAvg divides the noised sum by the sampled count, whoever dropped (fixed
        # sensitivity); plain secure FedAvg by the sites in the sum.
        denominator = params.num_sites if self.privacy.mode == "central" else count
        return self.strategy.apply_sum(server_round, wire.unflatten(total, like), denominator)

    def _into(
        self, receive: Callable[[int, dict[str, Any]], None]
    ) -> Callable[[int, Message], None]:
        def handle(sid: int, msg: Message) -> None:
            payload = wire.payload_of(msg)
            receive(sid, payload)
            self.bytes_up += payload_bytes(payload)

        return handle
