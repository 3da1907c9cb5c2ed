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
holds out a fixed, seeded ``val_fraction`` of blocks. Both are exactly what packing all tokens
into one array gave before (``pack_tokens`` + ``split_blocks``, kept as the reference).

Tokenization runs in ``data.num_proc`` processes on the driver's node, or, when fedray is
connected to a Ray cluster, as Ray tasks over its nodes (:mod:`orchestrator.data.ray_tasks`):
one shard per batch of text, with a bounded number of batches in flight, so the driver holds at
most a few batches of text and never the token array. Every path writes the same bytes. Both
directories are built under a temporary name and renamed into place, and a reader checks every
shard's size against the manifest, so a half-written cache is never used (it is rebuilt). Each
training worker memory-maps the shards and reads only the blocks of its micro-batches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from orchestrator.config.loader import ConfigError
from orchestrator.data.sources import iter_pieces
from orchestrator.data.tokenizer import encode_texts

log = logging.getLogger(__name__)

TOKENS_FORMAT = "fedray-tokens-v1"
MANIFEST = "manifest.json"
SPLIT_FILE = "split.json"
BATCH_CHARS = 4_000_000
"""Characters of text per tokenization task (one shard): ~1M tokens, a few MB in flight."""
AUTO_PARALLEL_BYTES = 16 << 20
"""Corpora below this size are tokenized in-process (starting processes would cost more)."""


Progress = Callable[[Iterator[list[tuple[str, bool]]]], Iterator[list[tuple[str, bool]]]]


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned dtype holding every id of a ``vocab_size`` vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


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


# --------------------------------------------------------------------------------------------
# Reading: blocks out of memory-mapped shards


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


# --------------------------------------------------------------------------------------------
# Writing: tokenize in parallel into shards


_TOKENIZER: PreTrainedTokenizerBase | None = None


def _init_worker(tokenizer: PreTrainedTokenizerBase) -> None:
    # Parallelism comes from the processes; one tokenizer thread each keeps the CPU count honest.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _TOKENIZER
    _TOKENIZER = tokenizer


def encode_shard(
    batch: list[tuple[str, bool]],
    eos_id: int,
    dtype: str,
    out: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> int:
    """Tokenize ``(piece, ends_document)`` pairs into the flat token file ``out`` (EOS after
    each document's last piece); returns the number of tokens written."""
    tok = tokenizer if tokenizer is not None else _TOKENIZER
    assert tok is not None, "encode_shard in a worker without _init_worker"
    encoded = encode_texts(tok, [p for p, _ in batch])
    parts: list[np.ndarray] = []
    limit = np.iinfo(np.dtype(dtype)).max
    eos = np.asarray([eos_id], dtype=dtype)
    for ids, (_, ends) in zip(encoded, batch, strict=True):
        arr = np.asarray(ids, dtype=np.int64)
        if len(arr) and int(arr.max()) > limit:  # a tokenizer whose ids exceed its own length
            raise ValueError(f"token id {int(arr.max())} does not fit {dtype}")
        parts.append(arr.astype(dtype))
        if ends:
            parts.append(eos)
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    try:
        with open(out, "wb") as fh:
            flat.tofile(fh)
    except OSError as e:  # on a cluster: a node where the cache is missing or read-only
        raise ConfigError(
            f"data.cache_dir: cannot write token shard {out} ({e.strerror or e}). The cache "
            "directory must be writable, and on a cluster mounted at the same path on every node.",
            "data.cache_dir",
        ) from e
    return len(flat)


def _batches(pieces: Iterator[tuple[str, bool]], chars: int) -> Iterator[list[tuple[str, bool]]]:
    batch: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Inline(Executor):
    """Runs each task at submit time (the single-process path, no start-up cost)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, tokenizer=self.tokenizer, **kwargs))
        return f


def resolve_num_proc(num_proc: int | None, files: Sequence[Path], on_cluster: bool = False) -> int:
    """``data.num_proc``, or (None) 1 for corpora below 16 MB, else one per CPU up to 8 (of the
    driver's node, or of the connected cluster up to 32 with ``on_cluster``)."""
    if num_proc is not None:
        return num_proc
    if sum(f.stat().st_size for f in files) < AUTO_PARALLEL_BYTES:
        return 1
    if on_cluster:
        from orchestrator.data.ray_tasks import cluster_parallelism

        return cluster_parallelism(None)
    return max(1, min(8, os.cpu_count() or 1))


def _write_tokens(
    files: Sequence[Path],
    text_field: str,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    num_proc: int,
    batch_chars: int,
    progress: Progress | None = None,
    on_cluster: bool = False,
) -> dict[str, Any]:
    eos = tokenizer.eos_token_id
    assert eos is not None, "tokenizer without EOS (ensure_special_tokens was skipped)"
    dtype = token_dtype(len(tokenizer)).name
    executor: Executor
    if num_proc <= 1:
        executor = _Inline(tokenizer)
    elif on_cluster:
        from orchestrator.data.ray_tasks import RayTasks

        executor = RayTasks(tokenizer)
    else:
        import multiprocessing as mp

        executor = ProcessPoolExecutor(
            num_proc, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(tokenizer,),
        )  # fmt: skip
    shards: list[dict[str, Any]] = []
    pending: deque[tuple[str, Future[int]]] = deque()

    def collect() -> None:
        name, fut = pending.popleft()
        shards.append({"file": name, "tokens": fut.result()})

    batches = _batches(iter_pieces(files, text_field), batch_chars)
    with executor:
        for i, batch in enumerate(progress(batches) if progress else batches):
            name = f"shard-{i:06d}.bin"
            pending.append(
                (name, executor.submit(encode_shard, batch, eos, dtype, str(out / name)))
            )
            while len(pending) > 2 * num_proc:  # bounded: a few batches of text in flight
                collect()
        while pending:
            collect()
    manifest = {
        "format": TOKENS_FORMAT,
        "dtype": dtype,
        "eos_id": int(eos),
        "vocab_size": len(tokenizer),
        "total_tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished temp dir into place; a concurrent builder's complete copy wins."""
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def token_cache(
    files: Sequence[Path],
    text_field: str,
    tokenizer: PreTrainedTokenizerBase,
    cache_key: str,
    cache_dir: str | os.PathLike[str],
    num_proc: int | None = None,
    batch_chars: int = BATCH_CHARS,
    progress: Progress | None = None,
    on_cluster: bool = False,
) -> Path:
    """The complete token directory for ``cache_key``, built first if missing or damaged
    (``on_cluster``: as Ray tasks over the connected cluster's nodes)."""
    target = Path(cache_dir).expanduser().resolve() / "tokens" / cache_key
    try:
        verify_tokens(target)
        return target
    except ValueError as e:
        if target.exists():
            log.warning("rebuilding the token cache: %s", e)
            shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{cache_key}-"))
    try:
        _write_tokens(
            files, text_field, tokenizer, tmp, resolve_num_proc(num_proc, files, on_cluster),
            batch_chars, progress, on_cluster,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, target)
    verify_tokens(target)
    return target


def split_dir(tokens_dir: Path, block_size: int, val_fraction: float) -> Path:
    """The train/validation block lists for one block size, built first if missing."""
    target = tokens_dir / f"split-b{block_size}-v{val_fraction}"
    if (target / SPLIT_FILE).is_file():
        return target
    total = int(read_manifest(tokens_dir)["total_tokens"])
    n = total // block_size
    if n < 2:
        raise ConfigError(
            f"data.paths: the corpus has {total} tokens, {n} block(s) of data.block_size="
            f"{block_size}; training needs at least 2 (one to train on, one to validate). Add "
            "text to data.paths or lower data.block_size.",
            "data.block_size",
        )
    train, val = split_indices(n, val_fraction, block_size)
    shutil.rmtree(target, ignore_errors=True)  # a split that died before split.json
    tmp = Path(tempfile.mkdtemp(dir=tokens_dir, prefix=".tmp-split-"))
    np.save(tmp / "train.npy", train.astype(np.int64))
    np.save(tmp / "val.npy", val.astype(np.int64))
    info = {"blocks": n, "train": len(train), "val": len(val), "block_size": block_size}
    (tmp / SPLIT_FILE).write_text(json.dumps(info))
    _publish(tmp, target)
    return target


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
