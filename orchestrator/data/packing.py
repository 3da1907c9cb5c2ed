"""Tokenize documents and pack them into fixed-length blocks, once, cached on disk.

The cache key is (corpus fingerprint, tokenizer fingerprint, block size), so changing any of them
re-tokenizes and nothing stale is ever reused. Files are written to a temp name and renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PackedData:
    """Packed token blocks: ``train`` and ``val`` are ``[n, block_size]`` integer arrays."""

    train: np.ndarray
    val: np.ndarray
    path: Path

    @property
    def block_size(self) -> int:
        return int(self.train.shape[1])


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
    n = len(blocks)
    if n < 2:
        raise ValueError(
            f"only {n} block(s) of tokens: the corpus is too small for data.block_size="
            f"{blocks.shape[1] if blocks.ndim == 2 else '?'}. Add text or lower data.block_size."
        )
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(0).permutation(n)  # fixed seed: the split never changes
    return blocks[np.sort(order[n_val:])], blocks[np.sort(order[:n_val])]


def _chunks(text: str, size: int = 100_000) -> list[str]:
    """Cut very long documents at line breaks so the tokenizer works on bounded pieces."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        out.append(text[start:end])
        start = end
    return out


def packed_dataset(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    val_fraction: float,
    cache_key: str,
    cache_dir: str | os.PathLike[str],
) -> PackedData:
    """Tokenize + pack + split, or load the cached result for ``cache_key``."""
    target = (
        Path(cache_dir).expanduser() / "packed" / f"{cache_key}-b{block_size}-v{val_fraction}.npz"
    )
    if not target.exists():
        eos = tokenizer.eos_token_id
        assert eos is not None, "tokenizer without EOS (ensure_special_tokens was skipped)"

        def docs():
            for text in texts:
                pieces = _chunks(text)
                ids: list[int] = []
                for enc in tokenizer(pieces, add_special_tokens=False)["input_ids"]:
                    ids.extend(enc)
                yield ids

        blocks = pack_tokens(docs(), block_size, eos)
        train, val = split_blocks(blocks, val_fraction)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, train=train, val=val)
        os.replace(tmp, target)
    with np.load(target) as z:
        return PackedData(train=z["train"], val=z["val"], path=target)
