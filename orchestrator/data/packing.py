"""Tokenize a corpus once into sharded token files on disk; training reads blocks by memory map.

Layout under ``data.cache_dir``::

    tokens/<corpus fp>-<tokenizer fp>/          one directory per (corpus, tokenizer)
        shard-000000.bin ...                    flat token ids (uint16 if the vocabulary fits,
                                                else uint32), documents separated by EOS
        manifest.json                           format, dtype, EOS, every shard's token count
        split-b<block>-v<val fraction>/         which blocks train and validate
            train.npy, val.npy, split.json      block numbers (int64); split.json written last

The token stream is the documents' tokens in corpus order, EOS after each document; block ``g``
is tokens ``[g * block, (g + 1) * block)`` (the tail that fills no block is dropped). The split
holds out a fixed, seeded ``val_fraction`` of blocks. Both equal packing every token into one
array in memory (``pack_tokens`` + ``split_blocks``: the reference the cache is tested against).

The cache is written by :mod:`orchestrator.data.token_writer` (tokenization in processes or Ray
tasks, one shard per batch of text, so the driver never holds the token array) and read by
:mod:`orchestrator.data.token_blocks` (the format, its checks, and the memory-mapped block views
training workers read from). This module joins them (:func:`packed_dataset`) and keeps the
in-memory reference; the writer's and reader's public names are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from orchestrator.data.token_blocks import (
    MANIFEST,
    SPLIT_FILE,
    TOKENS_FORMAT,
    PackedData,
    TokenBlocks,
    read_manifest,
    split_indices,
    token_dtype,
    verify_tokens,
)
from orchestrator.data.token_writer import (
    BATCH_CHARS,
    Progress,
    encode_shard,
    resolve_num_proc,
    split_dir,
    token_cache,
)

__all__ = [
    "BATCH_CHARS",
    "MANIFEST",
    "SPLIT_FILE",
    "TOKENS_FORMAT",
    "PackedData",
    "Progress",
    "TokenBlocks",
    "encode_shard",
    "pack_tokens",
    "packed_dataset",
    "read_manifest",
    "resolve_num_proc",
    "split_blocks",
    "split_dir",
    "split_indices",
    "token_cache",
    "token_dtype",
    "verify_tokens",
]


# --------------------------------------------------------------------------------------------
# Reference: the whole stream in memory (small data, and the test of the sharded cache)


def pack_tokens(docs: Iterable[list[int]], block_size: int, eos_id: int) -> np.ndarray:
    """Concatenate documents separated by EOS and cut into full blocks (the tail is dropped)."""
    flat: list[int] = []
    for ids in docs:
        flat.extend(ids)
        flat.append(eos_id)
    n = len(flat) // block_size
    dtype = np.uint16 if max(flat, default=0) < 2**16 else np.int32
    return np.asarray(flat[: n * block_size], dtype=dtype).reshape(n, block_size)


def split_blocks(blocks: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a fixed, shuffled ``val_fraction`` of blocks (at least one each side)."""
    train, val = split_indices(len(blocks), val_fraction, block_size=blocks.shape[1])
    return blocks[train], blocks[val]


def packed_dataset(
    files: Sequence[Path],
    text_field: str,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    val_fraction: float,
    cache_key: str,
    cache_dir: str | os.PathLike[str],
    num_proc: int | None = None,
    progress: Progress | None = None,
    on_cluster: bool = False,
) -> PackedData:
    """Tokenize (cached) and split (cached) the corpus; returns lazy block views. ``progress``
    wraps the iterator of text batches (one per shard) while a cache miss tokenizes;
    ``on_cluster`` tokenizes as Ray tasks (call while connected to the cluster)."""
    tokens = token_cache(
        files, text_field, tokenizer, cache_key, cache_dir, num_proc, progress=progress,
        on_cluster=on_cluster,
    )  # fmt: skip
    split = split_dir(tokens, block_size, val_fraction)
    return PackedData(
        train=TokenBlocks(tokens, split / "train.npy", block_size),
        val=TokenBlocks(tokens, split / "val.npy", block_size),
        path=tokens,
    )
