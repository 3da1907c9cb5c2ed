"""``pretrain(job)``: prepare data, run Ray Train workers, export the final model.

Data preparation (tokenizer, token cache) runs on the driver; a cache miss tokenizes in processes
on the driver's node, or, with ``cluster.address`` set, as Ray tasks over the cluster's nodes
(joined first, after checking that ``data.cache_dir`` is on storage every node sees).

Launch commands (see README "Pretraining"):
    fedray pretrain                                   # default preset, embedded Ray
    fedray pretrain my.yaml scaling.num_workers=16 scaling.use_gpu=true cluster.address=auto
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.cluster import check_capacity, check_reachable, ray_cluster
from orchestrator.config.loader import to_yaml
from orchestrator.config.schema import PretrainJob
from orchestrator.data import PreparedData, prepare_text_data
from orchestrator.data.shared import check_shared_storage
from orchestrator.export import export_hf
from orchestrator.models import hf_config
from orchestrator.pretrain.checkpoint import CheckpointInfo, check_safe, latest_complete
from orchestrator.pretrain.export import checkpoint_model_state
from orchestrator.pretrain.metrics import ProgressPrinter, create_sink
from orchestrator.report import report_hint
from orchestrator.run_log import console_to_run_log
from orchestrator.runs import read_metrics, resolve_run_dir
from orchestrator.tracking import TENSORBOARD_DIR, check_available

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_dir: Path
    export_dir: Path
    final_step: int
    metrics: list[dict[str, Any]]

    @property
    def losses(self) -> list[float]:
        return [m["loss"] for m in self.metrics if "loss" in m]


def launch_plan(job: PretrainJob, data: PreparedData | None = None) -> dict[str, Any]:
    """What would be launched (``--dry-run``): Ray scaling, backend and its settings, data."""
    s, t = job.scaling, job.train
    plan: dict[str, Any] = {
        "ray": {
            "address": job.cluster.address or "embedded local Ray",
            "scaling_config": {
                "num_workers": s.num_workers,
                "use_gpu": s.use_gpu,
                "resources_per_worker": {
                    "CPU": s.cpus_per_worker,
                    **({"GPU": 1} if s.use_gpu else {}),
                },
            },
            "torch_backend": "nccl" if s.use_gpu else "gloo",
            "max_failures": job.run.max_failures,
        },
        "backend": job.backend,
        "objective": job.train.objective
        + (
            f" (mlm_probability {job.train.mlm_probability})"
            if job.train.objective == "masked"
            else ""
        ),
        "batch": {
            "global_batch_size": t.global_batch_size,
            "micro_batch_size": t.micro_batch_size,
            "num_workers": s.num_workers,
            "grad_accum_steps": job.grad_accum_steps,
        },
    }
    if job.backend == "deepspeed":
        from orchestrator.pretrain.backends.deepspeed import deepspeed_config

        plan["deepspeed_config"] = deepspeed_config(job)
    if job.distill.enabled:
        from orchestrator.pretrain.distill import teacher_summary

        plan["distill"] = teacher_summary(job.distill)
    if data is not None:
        plan["data"] = {
            "files": [str(f) for f in data.files],
            "vocab_size": len(data.tokenizer),
            "train_blocks": len(data.packed.train),
            "val_blocks": len(data.packed.val),
            "block_size": data.packed.block_size,
            "tokens_per_epoch": data.packed.train.n_tokens,
            "token_cache": str(data.packed.path),
        }
    return plan


def check_resumable(job: PretrainJob, info: CheckpointInfo | None) -> None:
    """A run can resume only a checkpoint of its own backend, and DeepSpeed only with the world
    size that wrote it (each rank loads its own ZeRO partition); say so before launching."""
    from orchestrator.config.loader import ConfigError

    if info is None:
        return
    if info.backend != job.backend:
        raise ConfigError(
            f"backend={job.backend!r}, but this run's latest checkpoint {info.path} was written by "
            f"backend={info.backend!r}. Resume with backend={info.backend}, or start a new run "
            "(another run.name) from its weights with model.path=<HF export of this run>.",
            "backend",
        )
    if job.backend == "deepspeed" and info.world_size != job.scaling.num_workers:
        raise ConfigError(
            f"scaling.num_workers={job.scaling.num_workers}, but checkpoint {info.path} holds ZeRO "
            f"shards of {info.world_size} workers. Resume with scaling.num_workers="
            f"{info.world_size}, or start a new run (another run.name) from its weights with "
            "model.path=<HF export of this run> (optimizer state is not carried over).",
            "scaling.num_workers",
        )


def pretrain(
    job: PretrainJob, console: Console | None = None, callbacks: Sequence[Any] = ()
) -> PretrainResult:
    """Run (or resume) a pretraining job and export the final model; returns its run directory.

    ``callbacks``: Ray Train callbacks for the trainer's ``RunConfig`` (``fedray tune`` passes
    Ray Tune's report callback, which forwards every ``ray.train.report`` to the trial).

    The console shows fedray's lines and progress; Ray, DeepSpeed and transformers start-up
    lines go to ``RUN_DIR/run.log`` only, unless ``logging.verbose`` (see
    :mod:`orchestrator.run_log`)."""
    console = console or Console(highlight=False)
    run_dir = resolve_run_dir(job.run, "pretrain")
    t_start = time.time()
    check_available(job.logging)  # MLflow configured but not installed: exit 2, nothing started
    if job.cluster.address:
        check_reachable(job.cluster)  # a dead address: exit 2 in seconds, before data preparation
    if job.train.grad_clip == 0:
        log.warning("train.grad_clip=0: gradient clipping is off")
    with contextlib.ExitStack() as connected:
        if job.cluster.address:
            # On a cluster, a cache miss tokenizes as Ray tasks over its nodes: join it first and
            # check every node sees the cache (the training below reuses this connection).
            connected.enter_context(ray_cluster(job.cluster))
            check_capacity(job.scaling, job.cluster)  # exit 2 now, not after tokenizing
            check_shared_storage(cache_root(job.data.cache_dir), "data.cache_dir")
        return _prepare_and_train(job, console, run_dir, t_start, callbacks)


def cache_root(cache_dir: str) -> Path:
    """``data.cache_dir`` resolved and created (the shared-storage check writes a marker there)."""
    root = Path(cache_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _prepare_and_train(
    job: PretrainJob, console: Console, run_dir: Path, t_start: float, callbacks: Sequence[Any]
) -> PretrainResult:
    # ConfigError (bad data, a corpus too small...) before anything is launched
    data = prepare_text_data(
        job.data, on_cluster=bool(job.cluster.address), objective=job.train.objective
    )
    cfg = checked_model_config(job, data)
    if job.backend == "deepspeed":
        from orchestrator.pretrain.backends.deepspeed import deepspeed_config

        deepspeed_config(job)  # user JSON conflicts are a ConfigError before anything starts
    resumed_from = latest_complete(run_dir)
    check_resumable(job, resumed_from)
    if resumed_from is not None:
        check_safe(resumed_from)  # a file that would run code when unpickled: exit 2
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(job))
    data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    with console_to_run_log(run_dir, job.logging.verbose):
        return _train_and_export(job, data, cfg, run_dir, resumed_from, console, t_start, callbacks)


def checked_model_config(job: PretrainJob, data: PreparedData) -> Any:
    """The model's transformers config, after the checks that need the tokenizer (each a
    ``ConfigError``): the model's kind against ``train.objective``, a ``model.path`` that embeds
    every token id, and the ``distill`` teacher."""
    from orchestrator.config.loader import ConfigError

    tok = data.tokenizer
    cfg = hf_config(job.model, len(tok), job.data.block_size, tok.eos_token_id, tok.pad_token_id)
    check_model_objective(job, cfg)
    if job.model.path and cfg.vocab_size < len(tok):
        raise ConfigError(
            f"data.tokenizer: {len(tok)} tokens but model.path's vocabulary has "
            f"{cfg.vocab_size}. Use the model's own tokenizer (data.tokenizer.path=<model dir>).",
            "data.tokenizer.path",
        )
    if job.distill.enabled:
        from orchestrator.pretrain.distill import check_teacher

        check_teacher(job.distill, job.train.objective, tok, cfg.vocab_size)
    return cfg


def check_model_objective(job: PretrainJob, cfg: Any) -> None:
    """A ``model.path`` model trains with the objective of its kind (the schema checks
    ``model.family`` the same way): an encoder masked, a causal decoder causal."""
    from orchestrator.config.loader import ConfigError
    from orchestrator.models import is_encoder

    if job.model.path and is_encoder(cfg) != (job.train.objective == "masked"):
        want = "masked" if is_encoder(cfg) else "causal"
        raise ConfigError(
            f"train.objective={job.train.objective!r}, but model.path={job.model.path!r} is a "
            f"{cfg.model_type} model, trained with the {want} objective. Set "
            f"train.objective={want}, or pick a model of the other kind.",
            "train.objective",
        )


def _train_and_export(
    job: PretrainJob,
    data: PreparedData,
    cfg: Any,
    run_dir: Path,
    resumed_from: CheckpointInfo | None,
    console: Console,
    t_start: float,
    callbacks: Sequence[Any] = (),
) -> PretrainResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    console.print(
        f"[fedray] run {run_dir} | {job.backend} x {job.scaling.num_workers} workers"
        f" ({'GPU/nccl' if job.scaling.use_gpu else 'CPU/gloo'}) | "
        f"{len(data.packed.train)} train blocks x {job.data.block_size} tokens, vocab {len(data.tokenizer)}"
        + (f" | resuming from step {resumed_from.step}" if resumed_from else ""),
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"[fedray] log: {run_dir / 'run.log'}"
        + (
            f" | TensorBoard: tensorboard --logdir {run_dir / TENSORBOARD_DIR}"
            if job.logging.tensorboard
            else ""
        ),
        markup=False,
        soft_wrap=True,
    )

    with ray_cluster(job.cluster):
        # GPUs where there are none, or more CPUs than the nodes have: exit 2 now, not a
        # trainer waiting forever for resources.
        check_capacity(job.scaling, job.cluster)
        check_shared_storage(data.packed.path, "data.cache_dir")
        sink = create_sink(run_dir / "metrics.jsonl", job.logging)
        ray.get(sink.ready.remote())  # tracking set-up errors stop the run before training
        loop_cfg = {
            "job": job,
            "run_dir": str(run_dir),
            "hf_config": cfg.to_dict(),
            # Paths only: each worker memory-maps the token shards and reads its own blocks.
            "train_blocks": data.packed.train,
            "val_blocks": data.packed.val,
            "sink": sink,
            "tokenizer": data.tokenizer,  # the masked objective's [MASK] and special ids
        }
        from orchestrator.pretrain.loop import train_loop_per_worker

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_cfg,
            scaling_config=ScalingConfig(
                num_workers=job.scaling.num_workers,
                use_gpu=job.scaling.use_gpu,
                resources_per_worker={
                    "CPU": job.scaling.cpus_per_worker,
                    **({"GPU": 1} if job.scaling.use_gpu else {}),
                },
            ),
            torch_config=TorchConfig(backend="nccl" if job.scaling.use_gpu else "gloo"),
            run_config=RunConfig(
                name=run_dir.name,
                storage_path=str(run_dir.parent),
                failure_config=FailureConfig(max_failures=job.run.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=job.checkpoint.keep_last),
                callbacks=list(callbacks),
            ),
        )
        try:
            with ProgressPrinter(
                run_dir / "metrics.jsonl", job.train.max_steps, job.train.log_every, console
            ):
                trainer.fit()
            ray.get(sink.event.remote("training finished"))
        finally:
            # Close the event file even when training failed: the steps so far stay viewable.
            # A sink that cannot answer must not hide the training error.
            with contextlib.suppress(Exception):
                ray.get(sink.close.remote(), timeout=30)

    info = latest_complete(run_dir)
    if info is None or info.step != job.train.max_steps:
        raise RuntimeError(f"training ended without a complete final checkpoint in {run_dir}")
    state = checkpoint_model_state(info)
    export_dir = export_hf(state, cfg, data.tokenizer, run_dir / "export", job.train.objective)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    summary = {
        "final_step": info.step,
        "wall_s": round(time.time() - t_start, 1),
        "export": str(export_dir),
        "params": sum(v.numel() for v in state.values()),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    last = [m for m in metrics if "val_loss" in m]
    console.print(
        f"[fedray] done in {summary['wall_s']} s: step {info.step}"
        + (f", val_loss {last[-1]['val_loss']:.4f} (ppl {last[-1]['val_ppl']:.1f})" if last else "")
        + f"\n[fedray] Hugging Face export: {export_dir}"
        + f"\n[fedray] {report_hint(run_dir)}",
        markup=False,
        soft_wrap=True,
    )
    return PretrainResult(
        run_dir=run_dir, export_dir=export_dir, final_step=info.step, metrics=metrics
    )
