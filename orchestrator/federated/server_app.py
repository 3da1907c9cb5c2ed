"""The server entry point: a Flower ServerApp that runs a federated fine-tuning job.

    # stock Flower: pyproject [tool.flwr.app.components] serverapp = "orchestrator.federated.server_app:app"
    flwr run . --run-config 'config="simulate-demo" overrides="federation.num_rounds=2" run-dir="runs/fed1"'
    # from Python / `fedray simulate`: make_server_app(job) runs a resolved FederatedJob directly

Run config keys read by ``app`` (``context.run_config``, from ``[tool.flwr.app.config]`` and
``flwr run --run-config``; empty under ``run_simulation``, so ``simulate()`` uses
``make_server_app(job)`` instead):

    config      YAML file path or preset name (default "simulate-demo")
    overrides   space-separated key=value overrides, e.g. "strategy.name=fedadam federation.num_rounds=5"
    config-yaml the whole config as YAML text (wins over ``config``; what ``fedray server`` sends)
    run-dir     run directory (wins over run.dir / run.root + run.name); "" = from the config

What a run does (``run_federated``): build the starting model (``model.path`` = a local HF dir,
e.g. a ``fedray pretrain`` export, or from ``model.*``), evaluate it at every site (round 0),
then per round: sample sites, send the global model + the site config (orchestrator/federated/
protocol.py), fold the replies' updates as they arrive (strategies/), evaluate the new model at
every site, append a line to ``metrics.jsonl``, checkpoint (model + strategy state + sampling RNG,
atomically), and finally export ``run_dir/export`` as a plain HF directory (model + tokenizer).
A run directory with checkpoints is resumed from its last complete round.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from transformers import PreTrainedTokenizerBase

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, load_config, to_yaml
from orchestrator.contract.arrays import from_numpy, nbytes, to_numpy
from orchestrator.contract.model import (
    ModelSpec,
    build,
    classification_config,
    export,
    load_state,
    model_state,
    trainable_names,
)
from orchestrator.contract.task import site_config
from orchestrator.data.sources import (
    DEMO_LABELLED,
    DEMO_PRETRAIN,
    demo_path,
    fingerprint,
    iter_texts,
)
from orchestrator.federated import checkpoint
from orchestrator.federated.report import RoundTable
from orchestrator.runs import read_metrics, resolve_run_dir
from strategies import DeltaStrategy, build_strategy, stream_replies
from strategies.base import SiteReport

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "simulate-demo"


# --------------------------------------------------------------------------------------------
# Setup: tokenizer, labels, starting model


@dataclass
class ServerSetup:
    job: FederatedJob
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    model: torch.nn.Module
    update_keys: list[str]
    site_config: ConfigRecord


def server_data_path(job: FederatedJob) -> Path:
    """The labelled file the server can read (demo tweets when ``data.paths`` is empty)."""
    return Path(job.data.paths[0]).expanduser() if job.data.paths else demo_path(DEMO_LABELLED)


def resolve_tokenizer(job: FederatedJob) -> PreTrainedTokenizerBase:
    """``data.tokenizer.path``, else the tokenizer saved in ``model.path``, else a BPE trained on
    the bundled pretraining corpus (site-independent: the server never sees site text)."""
    from orchestrator.data.tokenizer import load_tokenizer, trained_tokenizer

    if job.data.tokenizer.path:
        return load_tokenizer(job.data.tokenizer.path)
    if job.model.path:
        d = Path(job.model.path).expanduser()
        if any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            return load_tokenizer(d)
        raise ConfigError(
            f"model.path={job.model.path!r} holds no tokenizer; set data.tokenizer.path to the "
            "tokenizer the model was trained with.",
            "data.tokenizer.path",
        )
    files = [demo_path(DEMO_PRETRAIN)]
    tok, _ = trained_tokenizer(
        iter_texts(files), job.data.tokenizer.vocab_size, fingerprint(files), job.data.cache_dir
    )
    return tok


def resolve_labels(job: FederatedJob) -> list[str]:
    if job.task.kind != "classification":
        return []
    if job.task.labels:
        return list(job.task.labels)
    from orchestrator.data.sources import load_labelled

    path = server_data_path(job)
    if not path.is_file():
        raise ConfigError(
            f"task.labels is empty and the server cannot read {str(path)!r} to find the classes; "
            "list them with task.labels=[a,b,c].",
            "task.labels",
        )
    _, labels, _ = load_labelled(path, job.data.text_field, job.data.label_field)
    return sorted(set(labels))


def prepare(job: FederatedJob) -> ServerSetup:
    """Tokenizer, labels, model spec and the starting model (seeded by ``train.seed``)."""
    from orchestrator.models import check_model_dir, hf_config

    tok = resolve_tokenizer(job)
    labels = resolve_labels(job)
    if job.model.path:
        check_model_dir(job.model.path)
    config = hf_config(job.model, len(tok), job.task.max_length, tok.eos_token_id)
    if job.task.kind == "classification":
        config = classification_config(config, labels, tok.pad_token_id)
    f = job.finetune
    spec = ModelSpec(
        task=job.task.kind,
        hf_config=config.to_dict(),
        finetune=f.mode,
        lora_r=f.lora_r,
        lora_alpha=f.lora_alpha,
        lora_dropout=f.lora_dropout,
        lora_targets=list(f.lora_target_modules),
    )
    torch.manual_seed(job.train.seed)
    model = build(
        spec, weights_dir=str(Path(job.model.path).expanduser()) if job.model.path else None
    )
    return ServerSetup(
        job=job,
        spec=spec,
        tokenizer=tok,
        labels=labels,
        model=model,
        update_keys=trainable_names(model),
        site_config=site_config(job, spec, tok, labels),
    )


# --------------------------------------------------------------------------------------------
# The round loop


@dataclass
class FederatedResult:
    run_dir: Path
    export_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> list[float | None]:
        """``eval[name]`` per round, round 0 (the starting model) first."""
        return [r.get("eval", {}).get(name) for r in self.rounds]


def _site_rows(strategy: DeltaStrategy) -> dict[str, dict[str, Any]]:
    sites: dict[str, dict[str, Any]] = {}
    for s in strategy.last_train.sites:
        row = sites.setdefault(s.site, {})
        row.update(s.metrics)
        if not s.accepted:
            row["rejected"] = s.reason
    for s in strategy.last_evaluate.sites:
        row = sites.setdefault(s.site, {})
        for k, v in s.metrics.items():
            row["eval-examples" if k == "num-examples" else k] = v
        if not s.accepted:
            row["eval-error"] = s.reason
    return sites


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


def _append(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def run_federated(
    grid: Grid,
    job: FederatedJob,
    run_dir: Path,
    *,
    setup: ServerSetup | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    table: RoundTable | None = None,
) -> FederatedResult:
    """Run (or resume) the job on ``grid``; returns the per-round records and the export dir."""
    setup = setup or prepare(job)
    fed = job.federation
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(job))
    metrics_path = run_dir / "metrics.jsonl"
    strategy = build_strategy(job, update_keys=setup.update_keys)
    table = table or RoundTable(job.task.kind)
    result = FederatedResult(run_dir, run_dir / "export")

    def emit(rec: dict[str, Any]) -> None:
        _append(metrics_path, rec)
        result.rounds.append(rec)
        table.row(rec)
        if on_round is not None:
            on_round(rec)

    global_arrays = {k: v.numpy() for k, v in model_state(setup.model).items()}
    start_round = 1
    ckpt = checkpoint.latest(run_dir)
    table.header()
    if ckpt is not None:
        global_arrays = ckpt.global_arrays
        strategy.load_state(ckpt.state["strategy"], ckpt.strategy_arrays)
        start_round = ckpt.round + 1
        log.warning("resuming %s from round %d", run_dir, ckpt.round)
        result.rounds = read_metrics(metrics_path)
    arrays = from_numpy(global_arrays)
    eval_cfg = setup.site_config
    timeout = fed.round_timeout_s
    t_run = time.monotonic()

    # node id -> site name, to name sites that stop replying (real sites drop out).
    site_names: dict[int, str] = {}

    def remember_names() -> None:
        for s in [*strategy.last_train.sites, *strategy.last_evaluate.sites]:
            if s.accepted:
                site_names[s.node_id] = s.site

    def evaluate(server_round: int, arrays: ArrayRecord) -> tuple[dict[str, Any], int]:
        msgs = list(strategy.configure_evaluate(server_round, arrays, eval_cfg, grid))
        sent = [m.metadata.dst_node_id for m in msgs]
        ev = strategy.aggregate_evaluate(server_round, stream_replies(grid, msgs, timeout))
        attribute_lost_replies(strategy.last_evaluate.sites, sent, site_names)
        remember_names()
        out = {k: v for k, v in (ev or {}).items() if not isinstance(v, list)}
        return out, nbytes(arrays) * len(msgs)

    if start_round == 1:
        t0 = time.monotonic()
        ev, down = evaluate(0, arrays)
        emit(
            {
                "round": 0,
                "eval": ev,
                "sites": _site_rows(strategy),
                "bytes_down": down,
                "bytes_up": 0,
                "round_time_s": round(time.monotonic() - t0, 3),
                "elapsed_s": round(time.monotonic() - t_run, 3),
            }
        )

    for server_round in range(start_round, fed.num_rounds + 1):
        t0 = time.monotonic()
        msgs = list(strategy.configure_train(server_round, arrays, setup.site_config, grid))
        bytes_down = nbytes(arrays) * len(msgs)
        sampled = [m.metadata.dst_node_id for m in msgs]
        new_arrays, train_metrics = strategy.aggregate_train(
            server_round, stream_replies(grid, msgs, timeout)
        )
        del msgs
        replied = {s.node_id for s in strategy.last_train.sites}
        dropped = [site_names.get(n, f"node-{n}") for n in sampled if n not in replied]
        # The SuperLink answers for a site it lost ("Node Unavailable") under its own node id.
        lost = [s for s in strategy.last_train.sites if s.node_id not in sampled]
        remember_names()
        skipped = new_arrays is None
        if new_arrays is not None:
            arrays = new_arrays
        ev, down = evaluate(server_round, arrays)
        train = dict(train_metrics or {})
        train["sites-sampled"] = len(sampled)
        train["sites-dropped"] = len(dropped)
        rec = {
            "round": server_round,
            "train": train,
            "eval": ev,
            "sites": _site_rows(strategy),
            "dropped": dropped,
            "bytes_up": int(train.get("bytes-received", 0)),
            "bytes_down": bytes_down + down,
            "skipped": skipped,
            "round_time_s": round(time.monotonic() - t0, 3),
            "elapsed_s": round(time.monotonic() - t_run, 3),
        }
        for s in lost:
            rec["sites"].pop(s.site, None)
        for name in dropped:
            reason = lost[0].reason if lost else "no reply before the round timeout"
            rec["sites"].setdefault(name, {})["dropped"] = reason
        checkpoint.save(
            run_dir,
            server_round,
            to_numpy(arrays),
            strategy.state_arrays(),
            {"strategy": strategy.state_meta(), "config_yaml": to_yaml(job)},
        )
        emit(rec)

    load_state(setup.model, to_numpy(arrays))
    export(setup.model, setup.tokenizer, result.export_dir)
    log.info("exported %s", result.export_dir)
    return result


# --------------------------------------------------------------------------------------------
# ServerApps


def make_server_app(
    job: FederatedJob,
    run_dir: Path | None = None,
    *,
    setup: ServerSetup | None = None,
    on_result: Callable[[FederatedResult], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    """A ServerApp bound to an already-resolved job (what ``simulate()`` runs in-process)."""
    server_app = ServerApp()
    target = run_dir or resolve_run_dir(job.run, "simulate")

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result = run_federated(grid, job, target, setup=setup, on_round=on_round)
        if on_result is not None:
            on_result(result)

    return server_app


def job_from_run_config(run_config: dict[str, Any]) -> tuple[FederatedJob, Path]:
    """The job and run directory named by a ``context.run_config`` (keys in the module doc)."""
    source = str(run_config.get("config", "") or DEFAULT_CONFIG)
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    config_yaml = str(run_config.get("config-yaml", "") or "")
    if config_yaml:
        # The whole resolved job, sent by `fedray server` (the SuperLink may be on another host).
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "job.yaml").write_text(config_yaml)
            job = load_config(FederatedJob, str(Path(d) / "job.yaml"), overrides)
    else:
        job = load_config(FederatedJob, source, overrides, default_preset=DEFAULT_CONFIG)
    run_dir_s = str(run_config.get("run-dir", "") or "")
    run_dir = (
        Path(run_dir_s).expanduser().absolute()
        if run_dir_s
        else resolve_run_dir(job.run, "simulate")
    )
    return job, run_dir


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job, run_dir = job_from_run_config(dict(context.run_config))
    run_federated(grid, job, run_dir)


__all__ = [
    "FederatedResult",
    "ServerSetup",
    "app",
    "job_from_run_config",
    "make_server_app",
    "prepare",
    "run_federated",
]
