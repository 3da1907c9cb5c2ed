"""The per-worker pretraining loop that Ray Train runs on every worker.

Per step: the global batch for this step is fixed by (seed, step); this rank runs its
micro-batches (gradient sync only on the last), the backend clips and steps, and rank 0 sends
metrics to the driver's MetricsSink. Checkpoints every N steps go through ``ray.train.report``.
The objective (:mod:`.objective`: causal or masked) turns blocks into inputs and labels; with a
``distill`` teacher the loss is :func:`.distill.distill_loss`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from orchestrator.config.schema import PretrainJob
from orchestrator.contract.metrics import perplexity
from orchestrator.data.sharding import (
    eval_batches_for_rank,
    global_batch_indices,
    micro_batches_for_rank,
)
from orchestrator.data.token_blocks import TokenBlocks
from orchestrator.models import build_model, name_default_loss
from orchestrator.pretrain.backends.base import Backend
from orchestrator.pretrain.checkpoint import checkpoint_dir_name, latest_complete
from orchestrator.pretrain.distill import distill_loss
from orchestrator.pretrain.mfu import flops_per_token, matmul_params, mfu, peak_flops
from orchestrator.pretrain.objective import VAL_SPLIT, Objective, prediction_mask

FAULT_MARKER = ".fault-injected"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and floats only (loads with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def device_peak(job: PretrainJob, device: torch.device) -> tuple[float | None, str]:
    """This worker's dense peak FLOP/s for the precision its matmuls run in, and a note for
    the log when there is none (CPU, or a GPU missing from ``mfu.PEAKS``)."""
    if device.type != "cuda":
        return None, ""
    from orchestrator.pretrain.backends.deepspeed import precision

    name = torch.cuda.get_device_name(device)
    prec = precision(job)
    peak = peak_flops(name, prec, tf32=torch.backends.cuda.matmul.allow_tf32)
    note = "" if peak else f"MFU not reported: no {prec} peak FLOP/s known for {name!r}"
    return peak, note


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Mean of each value over ranks (identity when not distributed)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def worker_model(job: PretrainJob, hf_config: dict[str, Any]) -> torch.nn.Module:
    """The model every worker builds (same init on every rank after ``seed_everything``)."""
    model = build_model(hf_config, path=job.model.path, objective=job.train.objective)
    model = name_default_loss(model)
    if job.train.activation_checkpointing:
        # Non-reentrant checkpointing: works with DDP's and DeepSpeed's gradient hooks and with
        # inputs that need no grad; the KV cache is meaningless while training.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False
    return model


def objective_and_teacher(
    job: PretrainJob, tokenizer: Any, device: torch.device
) -> tuple[Objective, torch.nn.Module | None]:
    """What turns blocks into inputs and labels, and the teacher (``distill``) if any."""
    t = job.train
    objective = Objective(t.objective, tokenizer, t.mlm_probability, t.seed)
    if not job.distill.enabled:
        return objective, None
    from orchestrator.pretrain.distill import load_teacher

    return objective, load_teacher(job.distill, t.objective, device)


def make_backend(job: PretrainJob, model: torch.nn.Module, rank: int, world: int) -> Backend:
    if job.backend == "deepspeed":
        from orchestrator.pretrain.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(model, job, rank, world)
    from orchestrator.pretrain.backends.ddp import DDPBackend

    return DDPBackend(model, job, rank, world)


def autocast_context(
    job: PretrainJob, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    if (
        device.type == "cuda"
        and job.train.precision in ("auto", "bf16", "fp16")
        and job.backend == "ddp"
    ):
        dtype = torch.float16 if job.train.precision == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def micro_loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    job: PretrainJob,
    teacher: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to train on, the student's own LM loss) of one micro-batch."""
    out = model(input_ids=inputs, labels=labels)
    if teacher is None:
        return out.loss, out.loss
    with torch.no_grad():  # the teacher only infers: no graph, no gradients
        teacher_logits = teacher(input_ids=inputs).logits
    mask = prediction_mask(labels, job.train.objective)
    d = job.distill
    loss = distill_loss(out.logits, teacher_logits, out.loss, mask, d.alpha, d.temperature)
    return loss, out.loss


def accumulate(
    backend: Backend,
    micro: list[tuple[torch.Tensor, torch.Tensor]],
    job: PretrainJob,
    teacher: torch.nn.Module | None,
    device: torch.device,
    amp: contextlib.AbstractContextManager[Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of this rank's micro-batches ``(inputs, labels)`` of one step
    (gradients synced on the last only); the sums of their losses and of their LM losses."""
    # Summed on the device: a float() here would stall the GPU before the optimizer step.
    loss_sum = torch.zeros((), device=device)
    lm_sum = torch.zeros((), device=device)
    for a, (x, labels) in enumerate(micro):
        with backend.no_sync(a < len(micro) - 1), amp:
            loss, lm = micro_loss(backend.model, x.to(device), labels.to(device), job, teacher)
        backend.backward(loss / len(micro))
        loss_sum += loss.detach().float()
        lm_sum += lm.detach().float()
    return loss_sum, lm_sum


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    val: TokenBlocks,
    job: PretrainJob,
    rank: int,
    world: int,
    device: torch.device,
    objective: Objective | None = None,
) -> tuple[float, float]:
    """Mean validation loss (the student's LM loss, per predicted token) over all ranks'
    slices, and its perplexity (masked objective: of the masked tokens, the same masks at every
    evaluation). Every rank runs the same number of micro-batches (padding rows are masked out
    of the loss): ZeRO-3 needs it."""
    objective = objective or Objective(job.train.objective)
    module.eval()
    batches = eval_batches_for_rank(
        len(val), rank, world, job.train.micro_batch_size, job.train.eval_batches
    )
    total, count = 0.0, 0
    with autocast_context(job, device):
        for rows, n_real in batches:
            x, labels = objective(val[rows], rows, 0, VAL_SPLIT)
            labels[n_real:] = -100  # Hugging Face's ignore index: padding adds no loss
            loss = module(input_ids=x.to(device), labels=labels.to(device)).loss
            n = int((labels != -100).sum())  # the loss is a mean over these tokens
            if n_real and n:
                total += float(loss) * n
                count += n
    module.train()
    s, c = all_reduce_mean([total, float(count)], device)
    loss = s / max(c, 1e-9)
    return loss, perplexity(loss)


def maybe_inject_fault(job: PretrainJob, step: int, rank: int, run_dir: Path) -> None:
    """Fail once per run directory at ``fault.fail_at_step`` (rehearses recovery)."""
    f = job.fault
    if f.fail_at_step is None or step != f.fail_at_step or rank != f.rank:
        return
    marker = run_dir / FAULT_MARKER
    if marker.exists():
        return
    marker.write_text(f"step={step} rank={rank} mode={f.mode}\n")
    if f.mode == "kill":
        os._exit(17)
    raise RuntimeError(f"fedray fault injection: rank {rank} fails at step {step}")


# Ray Train (2.55) echoes every ``ray.train.report()`` payload at INFO from each worker, as
# "Reporting training result <n>: <report>". Our progress lines already show those metrics.
REPORT_ECHO_PREFIX = "Reporting training result"


class DropReportEcho(logging.Filter):
    """Drops Ray Train's INFO echo of a ``report()`` payload; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.getMessage().startswith(
            REPORT_ECHO_PREFIX
        )


def quiet_ray_train_reports(loggers: Iterable[logging.Logger] | None = None) -> None:
    """Put a ``DropReportEcho`` on the handlers of this worker's root and ``ray.train`` loggers.

    Ray 2.55 has no public switch for the echo (``ray.train.LoggingConfig`` comes in a later Ray
    and covers only the ``ray.train`` logger). The echo's logger is named after its source *file*
    (``logging.getLogger(__file__)``), outside the ``ray.train`` hierarchy, so it reaches the
    console through the root logger that Ray Train configures on every worker. Matching the
    message on the handlers needs no import of Ray's ``_internal`` package and keeps working if
    Ray moves that logger under ``ray.train`` (whose handlers are filtered too); handlers, since a
    logger's own filters never see records propagated from its children. As with the log-level
    switch this replaces, the echo also leaves Ray's worker log files.
    tests/unit/test_pretrain_logging.py fails if Ray stops logging the echo with this prefix.
    """
    if loggers is None:
        loggers = (logging.getLogger(), logging.getLogger("ray.train"))
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, DropReportEcho) for f in handler.filters):
                handler.addFilter(DropReportEcho())


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    quiet_ray_train_reports()
    job: PretrainJob = cfg["job"]
    run_dir = Path(cfg["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, job.scaling.cpus_per_worker))

    train_blocks: TokenBlocks = cfg["train_blocks"]  # memory-mapped: reads only what it uses
    val_blocks: TokenBlocks = cfg["val_blocks"]
    sink = cfg["sink"]

    seed_everything(job.train.seed)  # identical init on every rank
    model = worker_model(job, cfg["hf_config"])
    t = job.train
    objective, teacher = objective_and_teacher(job, cfg.get("tokenizer"), device)
    n_matmul = matmul_params(model)  # before ZeRO-3 partitions the parameters
    backend = make_backend(job, model, rank, world)

    start_step = 0
    ray_ckpt = ray.train.get_checkpoint()
    prefer = None
    with contextlib.ExitStack() as stack:
        if ray_ckpt is not None:
            prefer = Path(stack.enter_context(ray_ckpt.as_directory()))
        info = latest_complete(run_dir, prefer=prefer)
        if info is not None:
            # A world-size mismatch for sharded checkpoints is refused by the runner before
            # launch and by the backend's load().
            extra = backend.load(info.path)
            start_step = int(extra["step"])
            set_rng_state(extra["rng"])
            if rank == 0:
                sink.event.remote(f"resumed from {info.path.name} at step {start_step}")

    accum = job.grad_accum_steps
    tokens_per_step = t.global_batch_size * train_blocks.shape[1]
    fpt = flops_per_token(
        n_matmul, model.config.num_hidden_layers, model.config.hidden_size, train_blocks.shape[1]
    )
    peak, note = device_peak(job, device)
    if note and rank == 0:
        sink.event.remote(note)
    amp = autocast_context(job, device)

    for step in range(start_step, t.max_steps):
        maybe_inject_fault(job, step, rank, run_dir)
        t0 = time.perf_counter()
        batch = global_batch_indices(step, t.global_batch_size, len(train_blocks), t.seed)
        micro = micro_batches_for_rank(batch, rank, world, t.micro_batch_size, accum)
        inputs = [objective(train_blocks[i], i, step) for i in micro]
        loss_sum, lm_sum = accumulate(backend, inputs, job, teacher, device, amp)
        lr = backend.lr()
        grad_norm = backend.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - t0
        loss_avg, lm_avg = all_reduce_mean([float(loss_sum) / accum, float(lm_sum) / accum], device)
        done = step + 1
        rec: dict[str, Any] = {
            "step": done,
            "loss": loss_avg,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_time": step_time,
            "tokens_per_s": tokens_per_step / step_time,
            # Stamped here, not on receipt: the sink can fall behind and take records in bursts.
            "wall_time": time.time(),
        }
        if teacher is not None:
            rec["lm_loss"] = lm_avg  # the student's own LM loss; "loss" mixes in the KL
        if peak:
            rec["mfu"] = mfu(rec["tokens_per_s"], fpt, peak, world)
        if done == t.max_steps or (t.eval_every and done % t.eval_every == 0):
            rec["val_loss"], rec["val_ppl"] = evaluate(
                backend.eval_module(), val_blocks, job, rank, world, device, objective
            )
        if rank == 0:
            sink.log.remote(rec)
        if done == t.max_steps or done % job.checkpoint.every_steps == 0:
            save_and_report(backend, job, done, rank, world, rec)
        elif "val_loss" in rec:
            # Every eval reaches Ray Train's report callbacks (Tune's early stopping acts on
            # them); all ranks evaluate, so all ranks report, as Ray Train requires.
            ray.train.report(numeric(rec))


def numeric(rec: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a step record (what ``ray.train.report`` is given)."""
    return {k: v for k, v in rec.items() if isinstance(v, (int, float))}


def save_and_report(
    backend: Backend, job: PretrainJob, step: int, rank: int, world: int, rec: dict[str, Any]
) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="fedray-ckpt-") as tmp:
        d = Path(tmp)
        # Every rank saves its RNG state (ranks differ only when dropout differs per rank).
        backend.save(d, step, {"step": step, "rng": rng_state()})
        has_files = any(d.iterdir())
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if has_files else None
        ray.train.report(
            numeric(rec),
            checkpoint=checkpoint,
            checkpoint_dir_name=checkpoint_dir_name(step),
        )
