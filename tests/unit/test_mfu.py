"""MFU (orchestrator.pretrain.mfu): FLOPs per token without embedding lookups, peaks per device
model and precision. Pure functions, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import ModelConfig
from orchestrator.models import build_model, hf_config
from orchestrator.pretrain.mfu import flops_per_token, matmul_params, mfu, peak_flops


def test_flops_per_token_by_hand():
    # 6 * 1000 + 12 * 2 layers * 64 wide * 128 tokens
    assert flops_per_token(1000, 2, 64, 128) == 6000 + 196_608


def test_matmul_params_leave_out_lookups_and_count_the_head_once():
    cfg = hf_config(ModelConfig(family="gpt2", n_layer=2, d_model=32, n_head=2), 100, 16, 0)
    model = build_model(cfg.to_dict())
    total = sum(p.numel() for p in model.parameters())  # tied head counted once
    wte, wpe = 100 * 32, 16 * 32
    # GPT-2 ties lm_head to wte: the lookups (wte, wpe) go, the head matmul (= wte) stays
    assert matmul_params(model) == total - wte - wpe + wte

    class Untied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.body = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)

        def get_output_embeddings(self):
            return self.head

    assert matmul_params(Untied()) == 4 * 4 + 4 + 4 * 10


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", False, 989e12),  # SXM
        ("NVIDIA H100 PCIe", "bf16", False, 756e12),
        ("NVIDIA H100 NVL", "fp16", False, 835e12),
        ("NVIDIA H100 80GB HBM3", "fp32", False, 67e12),  # fp32 is not rated against bf16
        ("NVIDIA H100 80GB HBM3", "fp32", True, 495e12),  # ... TF32 when it is switched on
        ("NVIDIA H200", "bf16", False, 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", False, 312e12),
        ("NVIDIA A100 80GB PCIe", "fp32", False, 19.5e12),
        ("NVIDIA L4", "bf16", False, 121e12),
        ("NVIDIA L40S", "bf16", False, 362e12),
        ("NVIDIA A10", "bf16", False, 125e12),
    ],
)
def test_peak_per_device_model_and_precision(name, precision, tf32, peak):
    assert peak_flops(name, precision, tf32) == peak


def test_unknown_device_has_no_peak():
    assert peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert peak_flops("NVIDIA A10G", "bf16") is None  # not the A10's figures


def test_mfu_sums_peaks_over_workers():
    assert mfu(1000.0, 1e9, 1e13, 2) == pytest.approx(0.05)
