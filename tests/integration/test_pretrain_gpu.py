"""GPU pretraining (NCCL, bf16 autocast, MFU). Skipped on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import PretrainJob, load_config
from orchestrator.pretrain import pretrain

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_gpu_ddp_reports_mfu_and_loss_falls(ray_local: str, tmp_path: Path, cache_dir: Path):
    import torch

    n = min(2, torch.cuda.device_count())  # ray_local has 2 CPUs: one per worker
    job = load_config(
        PretrainJob,
        None,
        [
            f"scaling.num_workers={n}",
            "scaling.use_gpu=true",
            "train.max_steps=30",
            "train.micro_batch_size=8",
            f"train.global_batch_size={8 * n}",
            f"data.cache_dir={cache_dir}",
            f"run.root={tmp_path}",
            "fault.rank=0",
        ],
        default_preset="pretrain-tiny",
    )
    result = pretrain(job)
    steps = [m for m in result.metrics if "loss" in m]
    assert steps[-1]["loss"] < steps[0]["loss"]
    if any(k in torch.cuda.get_device_name(0) for k in ("H100", "H200", "A100")):
        assert all(0 < m["mfu"] < 1 for m in steps)
