"""torch DistributedDataParallel through Ray Train's ``prepare_model`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import PretrainJob
from orchestrator.pretrain.checkpoint import write_manifest
from orchestrator.pretrain.safe_load import safe_load
from orchestrator.pretrain.schedule import lr_factor

STATE_FILE = "state.pt"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices, not biases/norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, job: PretrainJob) -> torch.optim.Optimizer:
    t = job.train
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2))


def make_scheduler(
    opt: torch.optim.Optimizer, job: PretrainJob
) -> torch.optim.lr_scheduler.LambdaLR:
    t = job.train
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.min_lr_ratio)
    )


class DDPBackend:
    name = "ddp"

    def __init__(self, model: torch.nn.Module, job: PretrainJob, rank: int, world_size: int):
        import ray.train.torch

        self.job = job
        self.rank = rank
        self.world_size = world_size
        self.raw = model
        # prepare_model moves to the worker's device and wraps in DDP when world_size > 1.
        self.model = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        self.optimizer = make_optimizer(self.raw, job)
        self.scheduler = make_scheduler(self.optimizer, job)
        fp16 = job.train.precision == "fp16" and job.scaling.use_gpu
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def no_sync(self, skip_sync: bool) -> contextlib.AbstractContextManager[Any]:
        if skip_sync and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float:
        clip = self.job.train.grad_clip
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.raw.parameters(), clip if clip > 0 else float("inf")
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, step: int, extra: dict[str, Any]) -> None:
        # Replicas are identical under DDP: rank 0 writes the whole state, others write nothing.
        if self.rank != 0:
            return
        state = {
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "extra": extra,
        }
        tmp = directory / f".tmp-{STATE_FILE}"
        torch.save(state, tmp)
        os.replace(tmp, directory / STATE_FILE)
        write_manifest(directory, step, self.world_size, self.name)

    def load(self, directory: Path) -> dict[str, Any]:
        state = safe_load(directory / STATE_FILE)
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        return state["extra"]

    def eval_module(self) -> torch.nn.Module:
        return self.raw


def load_model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DDP checkpoint (for export on the driver)."""
    return safe_load(directory / STATE_FILE)["model"]
