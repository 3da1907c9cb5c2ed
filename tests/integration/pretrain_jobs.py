"""Small but real pretraining jobs for the integration tests, and readers of their metrics."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import PretrainJob, load_config
from orchestrator.pretrain import PretrainResult


def tiny_job(
    root: Path,
    cache: Path,
    name: str,
    *overrides: str,
    steps: int,
    micro_batch_size: int,
    vocab_size: int,
    checkpoint_every: int,
) -> PretrainJob:
    """A 2-layer GPT-2 (d_model 64) on the bundled corpus in 32-token blocks, global batch 8,
    2 Ray Train workers; ``overrides`` come last and win."""
    return load_config(
        PretrainJob,
        None,
        [
            "model.n_layer=2",
            "model.d_model=64",
            "model.n_head=2",
            "data.block_size=32",
            f"data.tokenizer.vocab_size={vocab_size}",
            f"data.cache_dir={cache}",
            f"train.max_steps={steps}",
            "train.global_batch_size=8",
            f"train.micro_batch_size={micro_batch_size}",
            "train.warmup_steps=2",
            "train.lr=3e-3",
            "train.eval_every=0",
            "train.log_every=100",
            f"checkpoint.every_steps={checkpoint_every}",
            "checkpoint.keep_last=3",
            f"run.root={root}",
            f"run.name={name}",
            *overrides,
        ],
        default_preset="pretrain-tiny",
    )


def step_values(result: PretrainResult, key: str = "loss") -> dict[int, float]:
    """Value per step; after a restart a step is logged twice and the last value wins."""
    return {m["step"]: m[key] for m in result.metrics if key in m}


def events(result: PretrainResult) -> list[str]:
    return [m["event"] for m in result.metrics if "event" in m]
