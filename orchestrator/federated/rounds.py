"""The server's round loop: evaluate round 0, then train -> evaluate -> record -> checkpoint.

Flower-agnostic apart from the ``Grid`` it talks to: :mod:`orchestrator.federated.server_app`
wires it into a ServerApp, tests drive it with an in-process grid
(:class:`orchestrator.federated.local_grid.LocalGrid`). What a round does to the replies is the
strategy's pipeline (``strategies/pipeline.py``). This module asks the strategy for a plan, lets
the privacy ledger admit it, sends it, hands the replies back to the strategy and gets a typed
outcome (``strategies/outcome.py``); it never reads or writes an attribute of the strategy. It
keeps the run directory (``metrics.jsonl``, checkpoints, export), the ledger and the site names.
docs/architecture.md walks one round through these files.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import to_yaml
from orchestrator.contract.arrays import from_numpy, nbytes, to_numpy
from orchestrator.contract.attackers import select_attackers
from orchestrator.contract.messages import sent_bytes
from orchestrator.contract.model import export, load_state, model_state
from orchestrator.federated import checkpoint
from orchestrator.federated.ledger import PrivacyLedger
from orchestrator.federated.record import (
    RoundRecord,
    TrainStep,
    evaluation_record,
    merge_counts,
    train_record,
)
from orchestrator.federated.report import RoundTable
from orchestrator.federated.resume import check_resumable
from orchestrator.federated.secagg_round import SecureTrain
from orchestrator.federated.setup import ServerSetup, prepare
from orchestrator.runs import append_metrics, read_metrics
from orchestrator.tracking import log_round
from strategies import build_strategy, stream_replies
from strategies.outcome import EvaluateOutcome, Plan
from strategies.privacy import PrivacyBudgetExhausted
from strategies.replies import RoundReport, SiteReport

log = logging.getLogger(__name__)


@dataclass
class FederatedResult:
    run_dir: Path
    export_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    """Why the run ended before ``federation.num_rounds`` (the privacy budget); "" = it did not."""

    def metric(self, name: str) -> list[float | None]:
        """``eval[name]`` per round, round 0 (the starting model) first."""
        return [r.get("eval", {}).get(name) for r in self.rounds]


def attribute_lost_replies(
    reports: list[SiteReport], sent: list[int], site_names: dict[int, str]
) -> None:
    """Name error replies the SuperLink sent on behalf of sites it lost.

    For a site that stopped heartbeating, the SuperLink answers "Node Unavailable" under a node id
    that is not the site's, so the row would be named after that id. When the unanswered sites
    and such foreign replies pair up one-to-one, give each reply its site's id and name.
    """
    answered = {r.node_id for r in reports}
    missing = [n for n in sent if n not in answered]
    foreign = [i for i, r in enumerate(reports) if r.node_id not in sent]
    if not foreign or len(foreign) != len(missing):
        return
    for i, node in zip(foreign, missing, strict=True):
        name = site_names.get(node, f"node-{node}")
        reports[i] = replace(reports[i], node_id=node, site=name)


def simulated_attackers(job: FederatedJob) -> list[str]:
    """Names of the simulated sites that attack (the same choice the sites make)."""
    a = job.attack
    ids = select_attackers(
        job.federation.num_sites, a.fraction, a.sites or None, job.federation.seed
    )
    return [f"site-{i}" for i in ids]


class FederatedRun:
    """One run (or resumed run) of a job on a grid; :meth:`run` does all rounds."""

    def __init__(
        self,
        grid: Grid,
        job: FederatedJob,
        run_dir: Path,
        setup: ServerSetup,
        table: RoundTable,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        site_pool: bool = False,
    ) -> None:
        self.grid, self.job, self.run_dir, self.setup = grid, job, run_dir, setup
        self.table, self.on_round = table, on_round
        self.metrics_path = run_dir / "metrics.jsonl"
        self.strategy = build_strategy(
            job,
            update_keys=setup.update_keys,
            num_classes=len(setup.labels) or None,
            work_dir=run_dir / "replies",
        )
        self.result = FederatedResult(run_dir, run_dir / "export")
        self.task_record = setup.task.to_record()
        self.site_state_key = ""
        self.timeout = job.federation.round_timeout_s
        # A simulation pool: the grid's nodes act for federation.num_sites sites in turn
        # (orchestrator/contract/site_pool.py); sites are sampled and named by site id.
        self.site_pool = site_pool
        if site_pool:
            if job.privacy.secure_aggregation:
                raise ValueError("secure aggregation runs with one simulation node per site")
            self.strategy.use_site_pool(job.federation.num_sites)
        self.secure = (
            SecureTrain(grid, self.strategy, job.privacy, self.timeout)
            if job.privacy.secure_aggregation
            else None
        )
        # node id -> site name, to name sites that stop replying (real sites drop out).
        self.site_names: dict[int, str] = {}
        self.t_run = time.monotonic()
        # The privacy ledger (docs/privacy.md): charged per started round, checkpointed; its
        # budget check runs once the round's sample is drawn, before anything is sent.
        self.ledger = PrivacyLedger.for_job(job.privacy) if job.privacy.enabled else None

    # ---- run directory ------------------------------------------------------------------------

    def emit(self, record: RoundRecord) -> None:
        rec = record.to_json()
        append_metrics(self.metrics_path, rec)
        log_round(self.run_dir, self.job.logging, rec)  # TensorBoard event files (+ MLflow)
        self.result.rounds.append(rec)
        self.table.row(rec)
        if self.on_round is not None:
            self.on_round(rec)

    def restore(self) -> tuple[int, ArrayRecord]:
        """The first round to run and the global model: from the last checkpoint, if any.

        A row the checkpoint holds but ``metrics.jsonl`` lacks (a crash between the two writes)
        is appended, so no round's record is lost.
        """
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            self.use_site_state_key(secrets.token_hex(8))
            arrays = {k: v.numpy() for k, v in model_state(self.setup.model).items()}
            return 1, from_numpy(arrays)
        check_resumable(ckpt.state.get("config_yaml", ""), to_yaml(self.job), self.run_dir)
        self.use_site_state_key(str(ckpt.state.get("site_state_key", "")) or secrets.token_hex(8))
        self.strategy.load_state(ckpt.state["strategy"], ckpt.strategy_arrays)
        if self.ledger is not None:
            self.ledger.load(ckpt.state.get("privacy_ledger") or {})
        log.warning("resuming %s from round %d", self.run_dir, ckpt.round)
        rows = read_metrics(self.metrics_path)
        saved = ckpt.state.get("record")
        if saved is not None and not any(r.get("round") == ckpt.round for r in rows):
            append_metrics(self.metrics_path, saved)
            rows.append(saved)
        self.result.rounds = rows
        return ckpt.round + 1, from_numpy(ckpt.global_arrays)

    def use_site_state_key(self, key: str) -> None:
        """Sites key their persistent state (clients/site_state.py) by this token: drawn when a
        run starts, restored on resume, so only this run's state is ever picked up."""
        self.site_state_key = key
        task = replace(
            self.setup.task, state_key=key, sim_state_dir=str(self.run_dir / "site-state")
        )
        self.task_record = task.to_record()

    def save(self, server_round: int, arrays: ArrayRecord, rec: dict[str, Any]) -> None:
        state = {
            "strategy": self.strategy.state_meta(),
            "config_yaml": to_yaml(self.job),
            "record": rec,
            "site_state_key": self.site_state_key,
        }
        if self.ledger is not None:
            state["privacy_ledger"] = self.ledger.to_json()
        checkpoint.save(
            self.run_dir, server_round, to_numpy(arrays), self.strategy.state_arrays(), state
        )

    def stop(self, reason: str) -> None:
        """End the run before ``num_rounds`` (it still exports), saying why."""
        self.result.stop_reason = reason
        log.info("stopping: %s", reason)  # the table says it on the console
        self.table.note(f"stopped: {reason}")

    # ---- rounds -------------------------------------------------------------------------------

    def remember_names(self, *reports: RoundReport) -> None:
        if self.site_pool:  # a pool node acts for a different site in every message
            return
        for s in (s for r in reports for s in r.sites):
            if s.accepted:
                self.site_names[s.node_id] = s.site

    def names(self, plan: Plan, reports: list[SiteReport]) -> dict[int, str]:
        """node id -> site name for a batch just sent and answered (site pool: the plan's
        assignment; else the names sites reported, this round's first)."""
        if self.site_pool:
            return dict(plan.assigned)
        return {**self.site_names, **{r.node_id: r.site for r in reports}}

    def evaluate(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[EvaluateOutcome, dict[str, int]]:
        """The round's sampled sites (``federation.eval_sites_per_round``; all of them after the
        last round) evaluate ``arrays``; returns the outcome and the wire bytes sent to each
        site. Rounds that ``federation.eval_every`` skips evaluate nowhere.

        With a site pool the sites go in waves of the pool's size (each wave's replies are in,
        or timed out, before the next is sent): no node ever holds two messages."""
        fed = self.job.federation
        if not fed.evaluates(server_round):
            return EvaluateOutcome(), {}
        targets = self.strategy.sample_evaluate(
            server_round, self.grid, fed.eval_sites(server_round)
        )
        size = len(list(self.grid.get_node_ids())) if self.site_pool else len(targets)
        down: dict[str, int] = {}
        by_node: dict[int, int] = {}
        plans: list[Plan] = []

        def replies() -> Iterator[Message]:
            for i in range(0, len(targets), max(1, size)):
                plan = self.strategy.plan_evaluate(
                    server_round, arrays, self.task_record, self.grid, targets[i : i + size]
                )
                plans.append(plan)
                wave_down = sent_bytes(plan.messages)
                yield from stream_replies(self.grid, plan.messages, self.timeout)
                if self.site_pool:  # a pool node acts for another site in the next wave
                    down.update(merge_counts(down, by_site(wave_down, plan.assigned)))
                else:
                    by_node.update(wave_down)

        ev = self.strategy.fold_evaluate(server_round, replies())
        if not self.site_pool:  # one wave: name the nodes by their replies
            attribute_lost_replies(ev.report.sites, list(by_node), self.site_names)
            down = by_site(by_node, self.names(plans[0], ev.report.sites) if plans else {})
        self.remember_names(ev.report)
        return ev, down

    def train(self, server_round: int, arrays: ArrayRecord) -> TrainStep:
        """Sample (the ledger admits the round first), send, fold."""
        plan = self.strategy.plan_train(server_round, arrays, self.task_record, self.grid)
        if self.ledger is not None:  # raises PrivacyBudgetExhausted: nothing is sent
            self.ledger.admit(server_round, len(plan.messages), plan.population)
        sampled = plan.nodes
        if self.secure is not None:  # the server sees only the sum (secagg_round.py)
            outcome = self.secure.train(server_round, plan, arrays)
            # Counted as the model payload per site: SecAgg+'s key-exchange messages are not.
            bytes_down = {n: nbytes(arrays) for n in sampled}
        else:
            bytes_down = sent_bytes(plan.messages)
            replies = stream_replies(self.grid, plan.messages, self.timeout)
            plan.messages = []  # the grid holds what it sends; do not keep K copies here
            outcome = self.strategy.fold_train(server_round, replies)
        sites = outcome.report.sites
        replied = {r.node_id for r in sites}
        names = self.names(plan, sites)
        self.strategy.note_dropped(n for n in sampled if n not in replied)
        dropped = [names.get(n, f"node-{n}") for n in sampled if n not in replied]
        # The SuperLink answers for a site it lost ("Node Unavailable") under its own node id.
        lost = [r for r in sites if r.node_id not in sampled]
        self.remember_names(outcome.report)
        if self.ledger is not None:
            # Every site whose update left it is charged, whether or not it arrived.
            charged = [r.site for r in sites if r.node_id in sampled] + dropped
            self.ledger.record(server_round, len(sampled), plan.population, charged)
        return TrainStep(outcome, len(sampled), dropped, lost, by_site(bytes_down, names))

    def train_round(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, RoundRecord]:
        """One round: train, evaluate the new model; the next model and the round's record."""
        t0 = time.monotonic()
        step = self.train(server_round, arrays)
        if step.outcome.arrays is not None:
            arrays = step.outcome.arrays
        ev, down = self.evaluate(server_round, arrays)
        timing = (round(time.monotonic() - t0, 3), round(time.monotonic() - self.t_run, 3))
        rec = train_record(server_round, step, ev, down, timing)
        if self.ledger is not None:
            columns = self.ledger.columns()
            rec.epsilon = columns["epsilon"]
            rec.privacy = {**columns["privacy"], **step.outcome.privacy}
        if self.job.attack.kind != "none":
            # For analysis only: computed from the config, never from replies or used to filter.
            rec.attack = {"kind": self.job.attack.kind, "sites": simulated_attackers(self.job)}
        return arrays, rec

    def run(self) -> FederatedResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start_round, arrays = self.restore()
        (self.run_dir / "config.yaml").write_text(to_yaml(self.job))
        self.table.header()
        if start_round == 1:
            t0 = time.monotonic()
            ev, down = self.evaluate(0, arrays)
            now = time.monotonic()
            self.emit(evaluation_record(ev, down, round(now - t0, 3), round(now - self.t_run, 3)))
        for server_round in range(start_round, self.job.federation.num_rounds + 1):
            try:
                arrays, rec = self.train_round(server_round, arrays)
            except PrivacyBudgetExhausted as e:
                self.stop(str(e))
                break
            # Checkpoint first (it holds the record too): a crash before the metrics write
            # is repaired by restore(); the other order could lose the round's model.
            self.save(server_round, arrays, rec.to_json())
            self.emit(rec)
        load_state(self.setup.model, to_numpy(arrays))
        export(self.setup.model, self.setup.tokenizer, self.result.export_dir, self.setup.spec)
        log.info("exported %s", self.result.export_dir)
        return self.result


def by_site(down: dict[int, int], names: dict[int, str]) -> dict[str, int]:
    """Bytes sent per node -> per site name (a pool node acts for many sites in a round)."""
    out: dict[str, int] = {}
    for node, n in down.items():
        name = names.get(node, f"node-{node}")
        out[name] = out.get(name, 0) + n
    return out


def run_federated(
    grid: Grid,
    job: FederatedJob,
    run_dir: Path,
    *,
    setup: ServerSetup | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    table: RoundTable | None = None,
    site_pool: bool = False,
) -> FederatedResult:
    """Run (or resume) the job on ``grid``; returns the per-round records and the export dir.

    ``site_pool``: the grid's nodes are a simulation pool acting for ``federation.num_sites``
    sites in turn (``fedray simulate``'s ServerApp, ``sim_serverapp.py``; tests on a LocalGrid)."""
    setup = setup or prepare(job)
    run = FederatedRun(
        grid,
        job,
        run_dir,
        setup,
        table or RoundTable(job.task.kind, privacy=job.privacy.enabled),
        on_round=on_round,
        site_pool=site_pool,
    )
    return run.run()
