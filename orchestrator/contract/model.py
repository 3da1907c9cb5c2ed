"""The model a federation fine-tunes, built identically on the server and at every site.

The server sends sites a JSON description (HF config, task, LoRA settings); both sides build the
same module tree from it, so a state dict keyed by parameter name moves between them. Transport
uses :func:`model_state` (tied weights once, e.g. GPT-2's ``lm_head`` = ``wte``) and
:func:`trainable_names` (what a site's update holds: every parameter, or only LoRA adapters and
the classification head).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from orchestrator.contract.quantized import components, float_config, is_quantized, quantize_like
from orchestrator.export import save_hf_dir
from orchestrator.models import name_default_loss

log = logging.getLogger(__name__)

# LoRA targets by architecture when finetune.lora_target_modules is empty.
DEFAULT_LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],  # GPT-2 rewritten with nn.Linear by `fedray compress`
    "llama": ["q_proj", "v_proj"],
    "bert": ["query", "key", "value", "dense"],  # attention, its output and the MLP
}
# A BERT classifier pools [CLS] through ``bert.pooler``, which a masked-LM export lacks: it is
# new like the head, so it trains in full (never frozen at random values under an adapter).
LORA_FULLY_TRAINED = {"bert": ["pooler"]}


@dataclass
class ModelSpec:
    """Everything a site needs to rebuild the model (sent as JSON in the message config)."""

    task: str
    """``classification`` or ``causal_lm``."""
    hf_config: dict[str, Any]
    """``PretrainedConfig.to_dict()`` (includes num_labels/id2label for classification)."""
    finetune: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)
    quantized_modules: list[str] = field(default_factory=list)
    """Modules whose weights are int8 (a ``fedray compress`` export as the base; LoRA only):
    a site quantizes exactly these (orchestrator/contract/quantized.py)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls(**json.loads(text))

    def config(self) -> PretrainedConfig:
        return AutoConfig.for_model(**self.hf_config)


def classification_config(
    config: PretrainedConfig, labels: Sequence[str], pad_token_id: int | None
) -> PretrainedConfig:
    """Turn a causal-LM config into a sequence-classification one (new head, named labels)."""
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    # GPT-2/Llama classifiers pool the last non-pad token: they need to know the pad id.
    config.pad_token_id = pad_token_id
    return config


def build(spec: ModelSpec, weights_dir: str | None = None) -> torch.nn.Module:
    """The task model (random init, or weights from a local HF dir), LoRA-wrapped if asked."""
    return with_adapters(spec, base_model(spec, weights_dir))


def base_model(spec: ModelSpec, weights_dir: str | None = None) -> torch.nn.Module:
    """The task model before LoRA: loaded from ``weights_dir`` (a quantized export loads
    quantized), or built from the config with ``spec.quantized_modules`` quantized."""
    auto = (
        AutoModelForSequenceClassification
        if spec.task == "classification"
        else AutoModelForCausalLM
    )
    config = spec.config()
    if weights_dir:
        model = load_pretrained(auto, weights_dir, config)
    else:
        model = auto.from_config(config)
        quantize_like(model, spec.hf_config, spec.quantized_modules)
    if spec.task == "causal_lm":
        name_default_loss(model)
    return model


def with_adapters(spec: ModelSpec, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped with LoRA adapters (``finetune=lora``), else as it is."""
    config = model.config
    if spec.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        targets = spec.lora_targets or DEFAULT_LORA_TARGETS.get(config.model_type, [])
        if not targets:
            raise ValueError(
                f"no default LoRA targets for model type {config.model_type!r}; "
                "set finetune.lora_target_modules"
            )
        full = (
            LORA_FULLY_TRAINED.get(config.model_type, []) if spec.task == "classification" else []
        )
        lora = LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=targets,
            exclude_modules=[f"{m}.dense" for m in full] or None,
            modules_to_save=full or None,
            task_type="SEQ_CLS" if spec.task == "classification" else "CAUSAL_LM",
            # GPT-2 stores its projections as Conv1D (in x out), transposed vs nn.Linear.
            fan_in_fan_out=config.model_type == "gpt2",
        )
        with warnings.catch_warnings():
            # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias inside
            # get_peft_model; the FutureWarning is theirs, not actionable here, and would print
            # on every site at every round.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            # A site's int8 base (quantized from the config, no transformers quantizer) cannot
            # merge, which peft warns about; sites never merge, the server (loaded by
            # transformers) exports through a float copy (export()).
            warnings.filterwarnings("ignore", message=".*get_apply_tensor_subclass.*")
            model = get_peft_model(model, lora)
    return model


HEAD_PREFIXES = ("score.", "classifier.", "bert.pooler.")
"""A sequence-classification head (GPT-2, Llama: ``score``; BERT: ``classifier`` and the
pooler): new when a causal or masked LM is fine-tuned."""


def load_pretrained(auto: Any, weights_dir: str, config: PretrainedConfig) -> torch.nn.Module:
    """``from_pretrained`` of a local directory, with fedray's own one-line report instead of
    transformers' load table and progress bar (which would print for the expected case: a
    causal LM's weights under a new classification head). Any other missing weight is logged
    as a warning naming it: the model would start partly from random values."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = auto.from_pretrained(
            weights_dir,
            config=config,
            local_files_only=True,
            dtype=torch.float32,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    head = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    if head:
        log.info("%s: new classification head %s (seeded by train.seed)", weights_dir, head)
    if other := [k for k in missing if k not in head]:
        log.warning(
            "%s holds no weights for %d parameter(s) of the model, which start from random "
            "values: %s%s. Check that model.path is the model you meant.",
            weights_dir,
            len(other),
            ", ".join(other[:5]),
            " ..." if len(other) > 5 else "",
        )
    return model


def model_state(model: torch.nn.Module, dequantize: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter (tied ones once) and persistent buffer, by name, detached. A torchao
    int8 weight is its plain components (``name:qdata``, ``name:scale``: what travels), or with
    ``dequantize`` its float32 values under its own name."""
    state: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if not is_quantized(p):
            state[n] = p.detach()
        elif dequantize:
            state[n] = p.dequantize().float().detach()
        else:
            state.update(components(n, p))
    persistent = model.state_dict(keep_vars=True)
    for n, b in model.named_buffers():
        if n in persistent:
            state[n] = b.detach()
    return state


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The tensors a site's update holds (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def load_state(model: torch.nn.Module, arrays: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Copy received arrays into the model; the key sets must match exactly."""
    state = model_state(model)
    missing, extra = set(state) - set(arrays), set(arrays) - set(state)
    if missing or extra:
        raise ValueError(
            f"received weights do not match the model: missing={sorted(missing)[:3]} "
            f"extra={sorted(extra)[:3]}"
        )
    with torch.no_grad(), warnings.catch_warnings():
        # Received arrays are read-only views of the message bytes; we only read them, so
        # torch's "non-writable array" warning does not apply.
        warnings.simplefilter("ignore", UserWarning)
        for name, tensor in state.items():
            src = arrays[name]
            src_t = src if isinstance(src, torch.Tensor) else torch.from_numpy(np.asarray(src))
            tensor.copy_(src_t.reshape(tensor.shape))


def merged_for_export(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model: LoRA adapters merged into the base weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def float_copy(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """The float32 model ``model`` computes (an int8 base dequantized, adapters kept), so its
    adapters merge exactly (merging into int8 would round them away)."""
    plain = replace(spec, hf_config=float_config(spec.hf_config), quantized_modules=[])
    copy = build(plain)
    load_state(copy, model_state(model, dequantize=True))
    return copy


def export(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out: Path,
    spec: ModelSpec | None = None,
) -> Path:
    """Write the model (LoRA merged) + tokenizer as a HF directory, atomically (temp + rename).
    A model on an int8 base (``spec.quantized_modules``) is written in float32.

    ``AutoModelForSequenceClassification`` / ``AutoModelForCausalLM.from_pretrained(out)`` load it
    with plain transformers.
    """
    if spec is not None and spec.quantized_modules:
        model = float_copy(model, spec)
    elif any(is_quantized(p) for p in model.parameters()):
        raise RuntimeError("a model on a quantized base is exported with its ModelSpec")
    return save_hf_dir(merged_for_export(model), tokenizer, out)
