"""The token cache's on-disk format and its reader: blocks out of memory-mapped shards.

The layout (token directory, manifest, split directory) is described in
:mod:`orchestrator.data.packing`; :mod:`orchestrator.data.token_writer` writes it. A reader
checks every shard's size against the manifest (:func:`verify_tokens`), so a half-written cache
is never used, and each training worker reads only the blocks of its micro-batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENS_FORMAT = "fedray-tokens-v1"
MANIFEST = "manifest.json"
SPLIT_FILE = "split.json"


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned dtype holding every id of a ``vocab_size`` vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_indices(n: int, val_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted block numbers of the train and validation sides (fixed seed: never changes)."""
    if n < 2:
        raise ValueError(
            f"only {n} block(s) of tokens: the corpus is too small for data.block_size="
            f"{block_size}. Add text or lower data.block_size."
        )
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class TokenBlocks:
    """A ``[len, block_size]`` view of the cached blocks listed in ``index`` (block numbers).

    ``blocks[idx]`` (``idx`` an integer array) returns those rows as a new array; only the shard
    pages they touch are read. Pickles as paths (the memory maps are reopened where it lands)."""

    def __init__(self, tokens_dir: Path, index_file: Path, block_size: int):
        self.tokens_dir, self.index_file, self.block_size = tokens_dir, index_file, block_size
        manifest = read_manifest(tokens_dir)
        self.dtype = np.dtype(manifest["dtype"])
        self._files = [tokens_dir / s["file"] for s in manifest["shards"]]
        counts = np.asarray([s["tokens"] for s in manifest["shards"]], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._maps: list[np.ndarray | None] = [None] * len(self._files)
        self.index: np.ndarray = np.load(index_file, mmap_mode="r")

    def __getstate__(self) -> dict[str, Any]:
        return {"tokens_dir": self.tokens_dir, "index_file": self.index_file, "b": self.block_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        try:
            self.__init__(state["tokens_dir"], state["index_file"], state["b"])  # type: ignore[misc]
        except (OSError, ValueError) as e:  # unpickled on a worker that cannot see the cache
            raise RuntimeError(
                f"the token cache {state['tokens_dir']} cannot be read on this node ({e}). "
                "data.cache_dir must be on storage that every node of the cluster sees."
            ) from e

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.block_size

    @property
    def n_tokens(self) -> int:
        return len(self) * self.block_size

    def _shard(self, i: int) -> np.ndarray:
        m = self._maps[i]
        if m is None:
            try:
                m = np.memmap(self._files[i], dtype=self.dtype, mode="r")
            except OSError as e:
                raise RuntimeError(
                    f"token shard {self._files[i]} cannot be read on this node ({e}). "
                    "data.cache_dir must be on storage that every node of the cluster sees."
                ) from e
            self._maps[i] = m
        return m

    def _tokens(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream (may span shards)."""
        parts, end = [], start + length
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < end:
            lo = start - int(self._starts[i])
            take = min(end, int(self._starts[i + 1])) - start
            parts.append(self._shard(i)[lo : lo + take])
            start += take
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, idx: Any) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(self.index[idx], dtype=np.int64))
        out = np.empty((len(rows), self.block_size), dtype=self.dtype)
        for r, g in enumerate(rows):
            out[r] = self._tokens(int(g) * self.block_size, self.block_size)
        return out


@dataclass(frozen=True)
class PackedData:
    """The cached corpus: ``train`` and ``val`` are lazy ``[n, block_size]`` block views."""

    train: TokenBlocks
    val: TokenBlocks
    path: Path
    """The token directory (``tokens/<key>``)."""

    @property
    def block_size(self) -> int:
        return self.train.block_size


def read_manifest(tokens_dir: Path) -> dict[str, Any]:
    """The manifest of a complete token directory; ``ValueError`` says what is wrong."""
    try:
        m = json.loads((tokens_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{tokens_dir}: no readable {MANIFEST} ({e})") from e
    if m.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{tokens_dir}: format {m.get('format')!r}, expected {TOKENS_FORMAT!r}")
    return m


def verify_tokens(tokens_dir: Path) -> dict[str, Any]:
    """The manifest, after checking every shard has exactly its listed size."""
    m = read_manifest(tokens_dir)
    size = np.dtype(m["dtype"]).itemsize
    for s in m["shards"]:
        f = tokens_dir / s["file"]
        if not f.is_file() or f.stat().st_size != s["tokens"] * size:
            raise ValueError(f"{tokens_dir}: shard {s['file']} is missing or truncated")
    return m
