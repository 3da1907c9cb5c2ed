"""Language models: built from ``ModelConfig`` (GPT-2 or Llama causal decoders, BERT encoders
for the masked objective) or loaded from a local HF dir.

Nothing is fetched from a model hub: ``path`` must be a local directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import ModelConfig


def hf_config(
    cfg: ModelConfig,
    vocab_size: int,
    block_size: int,
    eos_id: int,
    pad_id: int | None = None,
    allow_quantized: bool = False,
) -> PretrainedConfig:
    """The transformers config for a model built from scratch (or loaded from ``cfg.path``)."""
    if cfg.path:
        path = check_model_dir(cfg.path, allow_quantized)
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    n_pos = cfg.max_position or block_size
    if cfg.family == "bert":
        return bert_config(cfg, vocab_size, n_pos, pad_id)
    if cfg.family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_pos,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.d_ff,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            tie_word_embeddings=cfg.tie_embeddings,
        )
    from transformers import LlamaConfig

    d_ff = cfg.d_ff or 64 * round(cfg.d_model * 8 / 3 / 64) or cfg.d_model * 2
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=d_ff,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head or cfg.n_head,
        max_position_embeddings=n_pos,
        attention_dropout=cfg.dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def bert_config(
    cfg: ModelConfig, vocab_size: int, n_pos: int, pad_id: int | None
) -> PretrainedConfig:
    """A BERT encoder's config (the MLM head's decoder tied to the input embeddings)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.d_ff or 4 * cfg.d_model,
        max_position_embeddings=n_pos,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=0 if pad_id is None else pad_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def is_encoder(config: PretrainedConfig) -> bool:
    """A config with a masked-LM head used as an encoder (BERT, RoBERTa, ...): it trains with
    the masked objective; GPT-2/Llama (no masked-LM head) and decoder configs do not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    return type(config) in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_decoder", False)


def check_model_dir(path: str, allow_quantized: bool = False) -> Path:
    """A local HF model directory, or a ConfigError saying how to provide one. A quantized
    export (``fedray compress``) is refused unless ``allow_quantized`` (a federation's LoRA
    fine-tuning, which checks it itself)."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"model.path: {path!r} is not a local Hugging Face model directory (no config.json). "
            "Hub ids cannot be downloaded here; export one with `fedray pretrain` (run_dir/export) "
            "or `save_pretrained`, or set model.path=null to build from model.* fields.",
            "model.path",
        )
    if not allow_quantized and quantization_of(p):
        raise ConfigError(
            f"model.path: {path!r} is a quantized export (`fedray compress`), which pretraining "
            "cannot train (its int8 weights take no gradient step); set model.path to the float "
            "export it came from (e.g. RUN_DIR/export). A federation can fine-tune it with "
            "finetune.mode=lora.",
            "model.path",
        )
    return p


def quantization_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``quantization_config`` a model directory's config.json names (a `fedray compress`
    output), or None."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(errors="replace"))
    except (OSError, json.JSONDecodeError):
        return None  # transformers reports an unreadable config when it loads it
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return qc if isinstance(qc, dict) and qc else None


def build_model(
    config: PretrainedConfig | dict[str, Any] | None,
    path: str | None = None,
    objective: str = "causal",
) -> PreTrainedModel:
    """Instantiate a causal LM (``objective=causal``) or a masked LM (``masked``) from a config
    (random init), or load its weights from a local dir."""
    auto = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    if path:
        return auto.from_pretrained(
            str(check_model_dir(path)), local_files_only=True, dtype=torch.float32
        )
    if isinstance(config, dict):
        config = AutoConfig.for_model(**config)
    return auto.from_config(config)


def name_default_loss(model: torch.nn.Module) -> torch.nn.Module:
    """Give a causal LM whose class name transformers cannot map to a loss (GPT-2's
    ``GPT2LMHeadModel``: ``loss_type`` is None) the loss transformers falls back to anyway,
    ``ForCausalLM``, so its first forward with labels does not warn "`loss_type=None` was set in
    the config but it is unrecognized" in every process. Models with a loss type are untouched."""
    if hasattr(model, "loss_type") and model.loss_type is None:
        model.loss_type = "ForCausalLM"
    return model
