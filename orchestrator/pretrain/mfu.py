"""Model FLOPs utilization: achieved training FLOP/s over the device's dense peak.

FLOPs per token (PaLM, appendix B): ``6 * N + 12 * L * d * T``.

* ``N`` counts the parameters that take part in matrix multiplies. An input embedding (token or
  position) is a table lookup and costs no FLOPs, so it is left out; the LM head is a
  ``d x vocab`` matmul on every token and counts once, whether or not it shares its weight with
  the token embedding (a tied head would otherwise vanish with the embedding).
* ``12 * L * d * T``: attention scores and the weighted sum of values (``Q K^T`` and ``A V``,
  2 FLOPs per multiply-add, forward + 2x backward) for ``L`` layers, width ``d``, sequence ``T``.

Peaks are dense (no sparsity) per device model, for the precision the matmuls actually run in:
bf16/fp16 tensor cores for mixed precision; for fp32 runs TF32 tensor cores only when
``torch.backends.cuda.matmul.allow_tf32`` is on (off by default in PyTorch), else plain FP32.
An unknown device gives no MFU (the caller logs it) rather than one against a wrong peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters used in matmuls: all unique ones, less every ``nn.Embedding`` table, plus the
    output projection when it is one of those tables (tied)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embeddings = {
        id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
    }
    n = total - sum(embeddings.values())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in embeddings:
        n += head.weight.numel()
    return n


def flops_per_token(n_matmul_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L d T`` (see the module docstring)."""
    return 6.0 * n_matmul_params + 12.0 * n_layer * d_model * seq_len


@dataclass(frozen=True)
class Peak:
    """Dense peak FLOP/s of one GPU: 16-bit tensor cores, TF32 tensor cores, plain FP32."""

    bf16: float
    tf32: float
    fp32: float


# (pattern on torch.cuda.get_device_name, peak); first match wins, so variants come first.
# Sources: NVIDIA data sheets (dense figures, i.e. half the "with sparsity" numbers).
PEAKS: list[tuple[str, Peak]] = [
    (r"H100.*PCIe", Peak(756e12, 378e12, 51.2e12)),
    (r"H100.*NVL", Peak(835e12, 418e12, 60e12)),
    (r"H100|H200|GH200", Peak(989e12, 495e12, 67e12)),  # SXM ("H100 80GB HBM3")
    (r"A100", Peak(312e12, 156e12, 19.5e12)),  # SXM and PCIe share the peak
    (r"L40S", Peak(362e12, 183e12, 91.6e12)),
    (r"\bL4\b", Peak(121e12, 60e12, 30.3e12)),
    (r"\bA10\b", Peak(125e12, 62.5e12, 31.2e12)),
]


def peak_flops(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """The dense peak of ``device_name`` for ``precision`` (``bf16``/``fp16``/``fp32``), or None
    when the device is not in :data:`PEAKS`."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name):
            if precision in ("bf16", "fp16"):
                return peak.bf16
            return peak.tf32 if tf32 else peak.fp32
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, world_size: int) -> float:
    """Achieved FLOP/s of all workers over their summed peak."""
    return tokens_per_s * flops_per_token / (peak * world_size)
