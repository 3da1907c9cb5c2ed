"""Weight-only quantization with torchao through transformers' ``TorchAoConfig``.

The model is loaded with ``quantization_config=TorchAoConfig(...)`` and written with
``save_pretrained``: transformers stores torchao's tensors in safetensors (torchao's flattened
format, its metadata in the file header) and names the config in ``config.json``, so plain
transformers (with torchao installed) loads the result. Every ``nn.Linear`` except the output
head is quantized: the LM head (tied to the input embeddings in GPT-2) and a classifier's
``score`` stay in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.compress.inputs import CompressError

KEEP_FLOAT = ["lm_head", "score"]
"""Output heads left in float32 (small, and the tied LM head is the input embedding)."""
INT4_GROUP = 32
"""int4 group size (torchao allows 32..256; the smallest is the most accurate)."""


def check_platform(method: str) -> None:
    """Refuse a method this machine cannot run, before anything is written."""
    if method != "int4":
        return
    # torchao 0.18's serializable int4 weight-only tensors run on CUDA only: the tinygemm
    # layout needs compute capability >= 8.0, the plain one mslk (CUDA); its CPU int4 layout
    # (a prototype) cannot be saved to safetensors.
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        raise CompressError(
            "--method int4: torchao's int4 weight-only kernels need a CUDA GPU of compute "
            "capability >= 8.0 and this machine has none; run it on such a GPU, or use "
            "--method int8 (runs on CPU)"
        )


def ao_config(method: str) -> Any:
    """The torchao config of ``method`` (weight-only; activations stay in float)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if method == "int8":
        return Int8WeightOnlyConfig()  # symmetric, one scale per output channel
    return Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d")


def device_for(method: str) -> str:
    return "cuda" if method == "int4" else "cpu"


def load_quantized(src: Path, model_cls: Any, method: str) -> torch.nn.Module:
    """``src`` (an ``nn.Linear`` model directory) loaded and quantized by transformers."""
    from transformers import TorchAoConfig

    q = TorchAoConfig(ao_config(method), modules_to_not_convert=KEEP_FLOAT)
    dtype = torch.bfloat16 if method == "int4" else torch.float32  # tinygemm takes bf16
    return model_cls.from_pretrained(
        str(src), quantization_config=q, dtype=dtype, device_map=device_for(method)
    ).eval()


@dataclass(frozen=True)
class LayerBytes:
    """What the quantized layers hold, against the same layers in float32."""

    modules: int
    """``nn.Linear`` modules whose weight is a torchao quantized tensor."""
    linear_total: int
    """All ``nn.Linear`` modules (the quantized ones plus the heads kept in float32)."""
    quantized_bytes: int
    """Their quantized weights (codes + scales + zero points) and float32 biases."""
    fp32_bytes: int
    """The same weights and biases in float32."""

    @property
    def ratio(self) -> float:
        return self.quantized_bytes / self.fp32_bytes if self.fp32_bytes else float("nan")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores; a torchao tensor's are its components' (codes, scales, ...)."""
    from torchao.utils import TorchAOBaseTensor

    if isinstance(t, TorchAOBaseTensor):
        return sum(tensor_bytes(getattr(t, name)) for name in t.tensor_data_names)
    return t.numel() * t.element_size()


def layer_bytes(model: torch.nn.Module) -> LayerBytes:
    """Count the quantized ``nn.Linear`` modules and their bytes (scales counted)."""
    from torchao.utils import TorchAOBaseTensor

    n = total = qbytes = fbytes = 0
    for m in model.modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        total += 1
        if not isinstance(m.weight, TorchAOBaseTensor):
            continue
        bias = 0 if m.bias is None else m.bias.numel() * 4
        n += 1
        qbytes += tensor_bytes(m.weight) + bias
        fbytes += m.weight.numel() * 4 + bias
    return LayerBytes(n, total, qbytes, fbytes)


__all__ = [
    "INT4_GROUP",
    "KEEP_FLOAT",
    "LayerBytes",
    "ao_config",
    "check_platform",
    "device_for",
    "layer_bytes",
    "load_quantized",
    "tensor_bytes",
]
