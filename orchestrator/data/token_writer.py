"""The token cache's writer: tokenize a corpus in parallel into shards, then the block split.

Tokenization runs in ``data.num_proc`` processes on the driver's node, or, when fedray is
connected to a Ray cluster, as Ray tasks over its nodes (:mod:`orchestrator.data.ray_tasks`):
one shard per batch of text, with a bounded number of batches in flight, so the driver holds at
most a few batches of text and never the token array. Every path writes the same bytes. Both
directories (tokens, split) are built under a temporary name and renamed into place; the format
is in :mod:`orchestrator.data.token_blocks`, whose reader refuses a half-written cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from orchestrator.config.loader import ConfigError
from orchestrator.data.sources import iter_pieces
from orchestrator.data.token_blocks import (
    MANIFEST,
    SPLIT_FILE,
    TOKENS_FORMAT,
    read_manifest,
    split_indices,
    token_dtype,
    verify_tokens,
)
from orchestrator.data.tokenizer import encode_texts

log = logging.getLogger(__name__)

BATCH_CHARS = 4_000_000
"""Characters of text per tokenization task (one shard): ~1M tokens, a few MB in flight."""
AUTO_PARALLEL_BYTES = 16 << 20
"""Corpora below this size are tokenized in-process (starting processes would cost more)."""


Progress = Callable[[Iterator[list[tuple[str, bool]]]], Iterator[list[tuple[str, bool]]]]


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
