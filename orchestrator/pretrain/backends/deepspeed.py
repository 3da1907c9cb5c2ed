"""DeepSpeed ZeRO (stages 0-3, optional CPU offload) inside the same Ray Train workers as DDP.

The DeepSpeed JSON is generated from the typed config (``deepspeed_config``); an optional user
JSON (``deepspeed.config_file``) adds advanced options, and any key that contradicts the typed
config is a :class:`ConfigError`, never a silent override. By default the optimizer is our
torch AdamW with the warmup + cosine ``LambdaLR`` (same as DDP), handed to
``deepspeed.initialize``: no fused_adam / cpu_adam JIT build, and the same update rule as DDP.

Checkpoints: every rank calls ``engine.save_checkpoint`` into its own temporary directory and
writes ``manifest.rank{r}.json`` listing exactly the files it wrote; Ray merges the ranks'
directories into one ``checkpoint_XXXXXXXX``. ``checkpoint.verify`` accepts it only when the
manifests of ranks 0..world-1 are all there and every listed file has its recorded size.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import PretrainJob
from orchestrator.pretrain.backends.ddp import make_optimizer, make_scheduler, param_groups
from orchestrator.pretrain.checkpoint import read_rank_manifest, write_rank_manifest
from orchestrator.pretrain.safe_load import SafeCheckpointEngine, deepspeed_globals, safe_load

EXTRA_FILE = "extra.rank{rank}.pt"
"""Per-rank ``extra`` (step, RNG): DeepSpeed's ``client_state`` lives only in rank 0's file at
ZeRO <= 2, but every rank must restore its own RNG."""
NO_PRINT = 1_000_000_000
"""``steps_per_print``: our progress lines already show loss/lr; DeepSpeed's would duplicate them."""

# Keys of the DeepSpeed JSON that the typed config owns -> the typed key(s) to change instead.
OWNED: dict[str, str] = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip",
    "zero_optimization.stage": "deepspeed.zero_stage",
    "zero_optimization.offload_optimizer.device": "deepspeed.offload_optimizer",
    "zero_optimization.offload_param.device": "deepspeed.offload_params",
    "bf16.enabled": "train.precision (bf16/fp16 need scaling.use_gpu=true)",
    "fp16.enabled": "train.precision (bf16/fp16 need scaling.use_gpu=true)",
    "optimizer": "deepspeed.optimizer and train.lr/beta1/beta2/weight_decay",
    "optimizer.type": "deepspeed.optimizer",
    "optimizer.params.lr": "train.lr",
    "optimizer.params.betas": "train.beta1/train.beta2",
    "optimizer.params.weight_decay": "train.weight_decay",
    "scheduler": "train.lr/warmup_steps/min_lr_ratio (warmup + cosine, always fedray's own)",
}


def precision(job: PretrainJob) -> str:
    """``fp32``, ``bf16`` or ``fp16``: mixed precision only on GPU workers (``auto`` = bf16)."""
    if not job.scaling.use_gpu:
        return "fp32"
    return "bf16" if job.train.precision in ("auto", "bf16") else job.train.precision


def typed_config(job: PretrainJob) -> dict[str, Any]:
    """The part of the DeepSpeed JSON that follows from the typed config (user JSON may not change it)."""
    t, ds = job.train, job.deepspeed
    prec = precision(job)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    cfg: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": job.grad_accum_steps,
        "gradient_clipping": float(t.grad_clip),  # 0.0 = off in DeepSpeed too
        "zero_optimization": zero,
        "bf16": {"enabled": prec == "bf16"},
        "fp16": {"enabled": prec == "fp16"},
    }
    if ds.optimizer == "deepspeed":
        # DeepSpeed builds FusedAdam (GPU) or DeepSpeedCPUAdam (offload) from this; weight decay
        # per parameter group comes from the groups we pass (no decay on biases/norms).
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": [t.beta1, t.beta2],
                "weight_decay": t.weight_decay,
            },
        }
    return cfg


def default_config(job: PretrainJob) -> dict[str, Any]:
    """Defaults a user JSON may override (nothing here changes the maths of a step)."""
    cfg: dict[str, Any] = {"steps_per_print": NO_PRINT, "wall_clock_breakdown": False}
    zero: dict[str, Any] = {}
    pin = job.scaling.use_gpu  # pinned host memory only helps GPU<->CPU copies
    if job.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"pin_memory": pin}
        if job.deepspeed.optimizer == "torch":
            # torch AdamW steps the offloaded fp32 states on the CPU: slower than DeepSpeed's
            # cpu_adam but needs no ~120 s / ~10 GB JIT build. deepspeed.optimizer=deepspeed
            # selects cpu_adam.
            cfg["zero_force_ds_cpu_optimizer"] = False
    if job.deepspeed.offload_params:
        zero["offload_param"] = {"pin_memory": pin}
    if zero:
        cfg["zero_optimization"] = zero
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        out[path] = v
        if isinstance(v, dict):
            out.update(_leaves(v, f"{path}."))
    return out


def _same(user: Any, ours: Any) -> bool:
    if user == "auto":  # Hugging Face style: "take the value fedray computes"
        return True
    if isinstance(user, bool) or isinstance(ours, bool):
        return user is ours
    if isinstance(user, (int, float)) and isinstance(ours, (int, float)):
        return float(user) == float(ours)
    if isinstance(user, list) and isinstance(ours, list):
        return len(user) == len(ours) and all(_same(a, b) for a, b in zip(user, ours, strict=True))
    return bool(user == ours)


def _disabled(path: str, value: Any) -> bool:
    """A user value that merely restates 'off' for a feature the typed config leaves off."""
    if path.endswith(".device"):
        return value in (None, "none")
    if path.endswith(".enabled"):
        return value is False
    return False


def read_user_config(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    key = "deepspeed.config_file"
    if not p.is_file():
        raise ConfigError(
            f"{key}={path!r}: no such file. Give the path of a DeepSpeed JSON readable on every "
            "worker (e.g. on the shared run.root filesystem), or set deepspeed.config_file=null.",
            key,
        )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}={path!r} is not valid JSON: {e}", key) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{key}={path!r} must hold a JSON object, got {type(data).__name__}", key)
    return data


def check_user_config(job: PretrainJob, user: dict[str, Any], source: str) -> None:
    """Raise ``ConfigError`` listing every user key that contradicts the typed config."""
    key = "deepspeed.config_file"
    if user.get("bf16", {}).get("enabled") is True and user.get("fp16", {}).get("enabled") is True:
        raise ConfigError(
            f"{key}={source!r} enables both bf16 and fp16; DeepSpeed runs one precision. "
            "Remove both sections from the file and set train.precision=bf16 or fp16 "
            "(with scaling.use_gpu=true).",
            key,
        )
    if "activation_checkpointing" in user:
        raise ConfigError(
            f"{key}={source!r} has an activation_checkpointing block, which only affects models "
            "that call deepspeed.checkpointing themselves; Hugging Face models do not, so it "
            "would do nothing. Remove the block and set train.activation_checkpointing=true "
            "(the model's own gradient checkpointing, for DDP and DeepSpeed alike).",
            key,
        )
    typed = _leaves(typed_config(job))
    given = _leaves(user)
    problems: list[str] = []
    for path, value in given.items():
        if path not in OWNED:
            continue
        ours = typed.get(path)
        if isinstance(value, dict) and isinstance(ours, dict):
            continue  # compared leaf by leaf
        if path not in typed:
            if _disabled(path, value):
                continue
            problems.append(
                f"{path}={json.dumps(value)} but the typed config leaves it unset; "
                f"remove it from the file and use {OWNED[path]}"
            )
        elif not _same(value, ours):
            problems.append(
                f"{path}={json.dumps(value)} but the typed config gives {json.dumps(ours)}; "
                f"remove it from the file or change {OWNED[path]}"
            )
    if problems:
        t = job.train
        batch = (
            f" (train_batch_size = train.micro_batch_size {t.micro_batch_size} x "
            f"scaling.num_workers {job.scaling.num_workers} x grad accumulation "
            f"{job.grad_accum_steps} = {t.global_batch_size})"
        )
        raise ConfigError(
            f"{key}={source!r} conflicts with the typed config: "
            + "; ".join(problems)
            + (batch if any(p.startswith(("train_", "gradient_acc")) for p in problems) else "")
            + ". The typed config owns these keys; nothing was launched.",
            key,
        )


def deepspeed_config(job: PretrainJob) -> dict[str, Any]:
    """The DeepSpeed JSON for this job: defaults <- user file (checked) <- typed config."""
    cfg = default_config(job)
    if job.deepspeed.config_file:
        user = read_user_config(job.deepspeed.config_file)
        check_user_config(job, user, job.deepspeed.config_file)
        cfg = _merge(cfg, user)
    typed = typed_config(job)
    cfg = _merge(cfg, typed)
    cfg = {**{k: cfg[k] for k in typed}, **cfg}  # the typed keys first: they are what matters
    # "auto" leaves of the user file that the typed config did not fill stay invalid for
    # DeepSpeed; say which.
    autos = [p for p, v in _leaves(cfg).items() if v == "auto"]
    if autos:
        raise ConfigError(
            f'deepspeed.config_file: {", ".join(autos)} = "auto" but fedray has no value for '
            "it; give a concrete value in the file.",
            "deepspeed.config_file",
        )
    return cfg


class DeepSpeedBackend:
    """One worker's DeepSpeed engine; ``model`` is the engine (its forward is the module's)."""

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, job: PretrainJob, rank: int, world_size: int):
        import deepspeed
        import ray.train.torch

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.job, self.rank, self.world_size = job, rank, world_size
        device = ray.train.torch.get_device()
        if device.type == "cuda":
            # DeepSpeed takes its device from LOCAL_RANK; make it the GPU Ray assigned.
            torch.cuda.set_device(device)
            os.environ["LOCAL_RANK"] = str(device.index)
        # Ray already created the process group (gloo on CPU, nccl on GPU): reuse it.
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo", dist_init_required=False
        )
        config = deepspeed_config(job)
        if job.deepspeed.optimizer == "torch":
            optimizer: Any = make_optimizer(model, job)
            scheduler: Any = make_scheduler(optimizer, job)
            params = None
        else:
            optimizer = None
            params = param_groups(model, job.train.weight_decay)

            def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
                return make_scheduler(opt, job)

        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=params,
            lr_scheduler=scheduler,
            config=config,
            dist_init_required=False,
        )
        # DeepSpeed's checkpoint engine unpickles with weights_only=False; load through ours.
        self.engine.checkpoint_engine = SafeCheckpointEngine(self.engine.checkpoint_engine)
        self.model = self.engine
        self.zero_stage = job.deepspeed.zero_stage

    def no_sync(self, skip_sync: bool) -> contextlib.AbstractContextManager[Any]:
        # The loop calls step() once per optimizer step, after all micro-batches; tell the
        # engine where the accumulation boundary is instead of counting micro-steps.
        self.engine.set_gradient_accumulation_boundary(not skip_sync)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divided by the accumulation steps.
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        pre_norm = None
        if self.zero_stage == 0 and precision(self.job) == "fp32":
            # DeepSpeed clips fp32 ZeRO-0 gradients without recording the norm.
            pre_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            )
        self.engine.step()
        norm = self.engine.get_global_grad_norm() if pre_norm is None else pre_norm
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, step: int, extra: dict[str, Any]) -> None:
        tag = checkpoint_tag(step)
        # Every rank writes its own shards (ZeRO partitions); rank 0 also writes `latest`.
        self.engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step})
        tmp = directory / f".tmp-{EXTRA_FILE.format(rank=self.rank)}"
        torch.save(extra, tmp)
        os.replace(tmp, directory / EXTRA_FILE.format(rank=self.rank))
        write_rank_manifest(
            directory,
            step,
            self.world_size,
            self.rank,
            self.name,
            tag=tag,
            zero_stage=self.zero_stage,
        )

    def load(self, directory: Path) -> dict[str, Any]:
        m = read_rank_manifest(directory, self.rank)
        if m["world_size"] != self.world_size:
            raise RuntimeError(
                f"{directory} holds ZeRO shards of {m['world_size']} workers, this run has "
                f"{self.world_size}. Resume with scaling.num_workers={m['world_size']}."
            )
        path, _ = self.engine.load_checkpoint(
            str(directory),
            tag=m["tag"],
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {directory}/{m['tag']}")
        # LambdaLR's state does not include the lr it last wrote into the optimizer: restore it
        # so the first step after resume uses the same lr as the uninterrupted run.
        for group, lr in zip(
            self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr
        return safe_load(directory / EXTRA_FILE.format(rank=self.rank))

    def eval_module(self) -> torch.nn.Module:
        # At ZeRO-3 the module's parameters are partitioned; its hooks gather them on forward.
        return self.engine.module


def checkpoint_tag(step: int) -> str:
    return f"global_step{step}"


def load_model_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a verified DeepSpeed checkpoint (ZeRO shards consolidated)."""
    checkpoint_dir = Path(checkpoint_dir)
    m = read_rank_manifest(checkpoint_dir, 0)
    tag = m["tag"]
    if int(m.get("zero_stage", 0)) == 0:
        # ZeRO-0 keeps the whole module in rank 0's model-states file.
        state = safe_load(checkpoint_dir / tag / "mp_rank_00_model_states.pt", deepspeed_globals())[
            "module"
        ]
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    # DeepSpeed's consolidation unpickles with weights_only=False: every file of this
    # checkpoint passed checkpoint.check_safe (weights_only) in checkpoint_model_state first.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag))
