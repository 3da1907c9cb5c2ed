"""A federation that fine-tunes a quantized export (``fedray compress`` output): LoRA adapters
train on a frozen int8 base, QLoRA-style.

The server loads the export with transformers (torchao int8 weight-only ``nn.Linear`` weights);
peft wraps those layers with its torchao LoRA layer. A torchao weight is a tensor subclass made of
plain tensors (int8 codes, fp32 scales): on the wire each travels as its own array,
``<parameter>:<component>`` (e.g. ``...c_attn.base_layer.weight:qdata``), so the contract's
arrays stay plain numpy and the site's base is bit-for-bit the server's. A site builds the float
model from the config, quantizes exactly the modules the server names
(:attr:`ModelSpec.quantized_modules`) with the export's own torchao config, and copies the received
components in. The run's export is the model its rounds evaluated, in float32: dequantized base +
merged adapters (re-quantizing would round small adapter updates away; ``fedray compress`` it
again for an int8 copy).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

SEP = ":"
"""Between a quantized parameter's name and its component's (never in a module path)."""


def is_quantized(t: torch.Tensor) -> bool:
    """A torchao quantized tensor (torchao is only imported when something imported it)."""
    if "torchao" not in sys.modules:
        return False
    from torchao.utils import TorchAOBaseTensor

    return isinstance(t, TorchAOBaseTensor)


def components(name: str, t: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The plain tensors a torchao tensor is made of, keyed ``<name>:<component>`` (the
    optional ones only when present)."""
    names = list(t.tensor_data_names) + list(getattr(t, "optional_tensor_data_names", ()))
    for c in names:
        part = getattr(t, c, None)
        if part is not None:
            yield f"{name}{SEP}{c}", part.detach()


def quantized_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules whose weight is a torchao quantized tensor."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and is_quantized(m.weight)
    ]


def quantization_config(hf_config: dict[str, Any]) -> Any:
    """The export's ``TorchAoConfig`` (from its config.json), or None for a float model."""
    qc = hf_config.get("quantization_config")
    if not qc:
        return None
    from transformers import TorchAoConfig

    return TorchAoConfig.from_dict(dict(qc))


def quantize_like(model: torch.nn.Module, hf_config: dict[str, Any], names: Sequence[str]) -> None:
    """Quantize exactly the modules ``names`` of a float ``model`` as the export's torchao
    config did (their values are replaced by the server's right after)."""
    if not names:
        return
    try:
        from torchao.quantization import quantize_
    except ImportError as e:  # a site without the compress extra
        raise RuntimeError(
            "the federation fine-tunes an int8 base, which needs torchao at every site: "
            "pip install 'fedray[compress]'"
        ) from e

    wanted = set(names)
    config = quantization_config(hf_config)
    if config is None:
        raise ValueError("quantized_modules given but the model config has no quantization_config")
    quantize_(model, config.get_apply_tensor_subclass(), filter_fn=lambda _m, fqn: fqn in wanted)
    missing = wanted - set(quantized_modules(model))
    if missing:
        raise ValueError(f"modules {sorted(missing)[:3]} could not be quantized like the server's")


def float_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The same config without its quantization (a float model of the same architecture)."""
    return {k: v for k, v in hf_config.items() if k != "quantization_config"}


__all__ = [
    "SEP",
    "components",
    "float_config",
    "is_quantized",
    "quantization_config",
    "quantize_like",
    "quantized_modules",
]
