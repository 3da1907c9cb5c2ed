"""Data: local sources, tokenizers, sharded token cache (memory-mapped blocks), deterministic
sharding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config.schema import DataConfig
from orchestrator.data.sources import fingerprint, iter_texts, resolve_files
from orchestrator.progress import track

if TYPE_CHECKING:  # transformers loads only when data is prepared: a bad path is answered at once
    from transformers import PreTrainedTokenizerBase

    from orchestrator.data.packing import PackedData


@dataclass
class PreparedData:
    """What the driver hands to training: the tokenizer and the packed blocks."""

    tokenizer: PreTrainedTokenizerBase
    packed: PackedData
    files: list[Path]


def prepare_text_data(
    cfg: DataConfig, on_cluster: bool = False, objective: str = "causal"
) -> PreparedData:
    """Resolve files, get a tokenizer (load or train, cached) and pack blocks (cached).

    ``objective=masked``: a trained tokenizer is a WordPiece with BERT's special tokens, and a
    loaded one must have a mask token (a ``ConfigError`` naming ``data.tokenizer.path``).

    ``on_cluster`` (fedray connected to a Ray cluster): a cache miss tokenizes as Ray tasks over
    the cluster's nodes instead of processes on this one; ``cfg.cache_dir`` must then be on
    storage every node sees (check it first: :func:`orchestrator.data.shared.check_shared_storage`).
    """
    from orchestrator.data.packing import packed_dataset
    from orchestrator.data.tokenizer import (
        check_mask_token,
        load_tokenizer,
        tokenizer_fingerprint,
        trained_tokenizer,
    )

    files = resolve_files(cfg.paths)
    corpus_fp = fingerprint(files)
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        if objective == "masked":
            check_mask_token(tok, cfg.tokenizer.path)
    else:
        tok, _ = trained_tokenizer(
            track(iter_texts(files, cfg.text_field), "training the tokenizer"),
            cfg.tokenizer.vocab_size,
            corpus_fp,
            cfg.cache_dir,
            kind="wordpiece" if objective == "masked" else "bpe",
        )
    key = f"{corpus_fp}-{tokenizer_fingerprint(tok)}"
    # Progress shows only while a cache miss tokenizes the corpus (one count per ~4 MB shard).
    packed = packed_dataset(
        files, cfg.text_field, tok, cfg.block_size, cfg.val_fraction, key, cfg.cache_dir,
        cfg.num_proc, progress=lambda shards: track(shards, "tokenizing", unit="shards"),
        on_cluster=on_cluster,
    )  # fmt: skip
    return PreparedData(tokenizer=tok, packed=packed, files=files)


def __getattr__(name: str) -> Any:
    if name == "PackedData":  # kept importable from here without loading transformers early
        from orchestrator.data.packing import PackedData

        return PackedData
    raise AttributeError(name)


__all__ = ["PackedData", "PreparedData", "prepare_text_data", "resolve_files"]
