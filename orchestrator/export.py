"""Hugging Face model directories (safetensors + config + tokenizer) that
``AutoModel*.from_pretrained(dir)`` loads without fedray installed.

Shared by pretraining (the final export of a run) and the federation contract (the fine-tuned
model a server exports); written atomically, so a reader never sees half an export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from orchestrator.models import build_model


def export_hf(
    state: dict[str, torch.Tensor],
    hf_config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase | None,
    out: Path,
    objective: str = "causal",
) -> Path:
    """Write the model (+ tokenizer) to ``out`` atomically (temp dir, then rename); a masked
    objective's model is a masked LM (``AutoModelForMaskedLM`` loads it)."""
    model = build_model(hf_config, objective=objective)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings may be absent from the state dict; anything else is a real mismatch.
    missing = [k for k in missing if k not in TIED_OUTPUTS]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing={missing} unexpected={unexpected}"
        )
    return save_hf_dir(model, tokenizer, out)


TIED_OUTPUTS = ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
"""Output weights tied to others (causal LM head; BERT's MLM decoder and its bias)."""


def drop_null_loss_type(config: PretrainedConfig) -> None:
    """Remove a ``loss_type: null`` that a config may carry (config.json files written by some
    transformers 4.x releases have it, and ``model.path`` passes it on): an export must not
    name a loss, so plain transformers picks the one of the model class it loads."""
    if "loss_type" in vars(config) and config.loss_type is None:
        delattr(config, "loss_type")


def save_hf_dir(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, out: Path
) -> Path:
    """``save_pretrained`` model (+ tokenizer) into a temp dir beside ``out``, then rename it into
    place, so a reader never sees half an export. transformers' "Writing model shards" progress
    bar is off while it writes (fedray prints the export's path when it is done)."""
    from transformers.utils import logging as hf_logging

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    if isinstance(getattr(model, "config", None), PretrainedConfig):
        drop_null_loss_type(model.config)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
