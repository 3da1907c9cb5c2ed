"""Update codecs: what a site's update looks like on the wire, and how the server reads it back.

Pure functions over ``{name: ndarray}``; the site encodes (``clients/compression.py``), the
server decodes while validating the reply (``strategies/validation.py``). Encoded tensors travel
in the reply's one ArrayRecord. ``int8`` and ``topk`` pack all tensors into two arrays (each array
costs ~300 bytes of headers on the wire, which would dominate a LoRA update), over the
trainable tensors flattened and concatenated in sorted-name order (both sides know the names):

    none   T: float32, T's shape (one array per trainable tensor T)
    fp16   T: float16, T's shape (values clipped to fp16's finite range)
    int8   int8::codes: int8 [N] in [-127, 127]; int8::scales: float32, ceil(size_T / block)
           per tensor T in order; value = code * its block's scale. Stochastic rounding makes
           it unbiased with |decoded - x| < scale = max|block| / 127
    topk   topk::idx: int32 [m] strictly increasing positions in [0, N); topk::val: float32 [m];
           the ``ratio`` x N largest-magnitude entries over all tensors together; the rest is
           the site's error-feedback residual (added to its next update)

Decoding is strict: exactly the expected keys, dtypes and shapes, indices in range and sorted
(so never duplicated), finite values and scales, at most the top-k budget of entries; any
violation is a :class:`CodecError` with the reason. Declared shapes are checked before a payload
is parsed, so an oversized array is refused without being read (:func:`check_layout`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord

from orchestrator.contract.arrays import Arrays, array_view

CODES = "int8::codes"
SCALES = "int8::scales"
IDX = "topk::idx"
VAL = "topk::val"
PACKED = {"int8": (CODES, SCALES), "topk": (IDX, VAL)}
FP16_MAX = float(np.finfo(np.float16).max)
INT8_LEVELS = 127
"""Codes are in [-127, 127]: symmetric, so the rounding is unbiased at both ends."""
MAX_ENTRIES = 2**31 - 1
"""Top-k positions are int32: at most this many trainable entries."""


class CodecError(ValueError):
    """An encoded update that cannot be decoded; ``str(e)`` is the reason."""


def topk_budget(total: int, ratio: float) -> int:
    """Entries a top-k update may carry: ``ceil(ratio x total)``, at least 1."""
    return max(1, math.ceil(ratio * total))


def _sizes(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    return [(k, int(np.prod(shapes[k], dtype=np.int64))) for k in sorted(shapes)]


def _flat(update: Mapping[str, np.ndarray]) -> np.ndarray:
    parts = [np.asarray(update[k], dtype=np.float32).reshape(-1) for k in sorted(update)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _unflat(flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    out: Arrays = {}
    start = 0
    for k, n in _sizes(shapes):
        out[k] = flat[start : start + n].reshape(shapes[k])
        start += n
    return out


# ---- encoders (site side) --------------------------------------------------------------------


def encode_fp16(update: Mapping[str, np.ndarray]) -> Arrays:
    return {
        k: np.clip(v, -FP16_MAX, FP16_MAX).astype(np.float16, copy=False) for k, v in update.items()
    }


def quantize_int8(
    x: np.ndarray, block_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scales)`` of one tensor, flattened: per-block scale ``max|x| / 127``,
    stochastic rounding ``floor(x / scale + u)``, ``u ~ U[0, 1)`` (so ``E[code x scale] = x``)."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    n = flat.size
    nblocks = -(-n // block_size)
    padded = np.zeros(nblocks * block_size, dtype=np.float32)
    padded[:n] = flat
    blocks = padded.reshape(nblocks, block_size)
    scales = (np.abs(blocks).max(axis=1) / INT8_LEVELS).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))[:, None]
    scaled = blocks / safe + rng.random(blocks.shape, dtype=np.float32)
    codes = np.clip(np.floor(scaled), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes.reshape(-1)[:n], scales


def encode_int8(
    update: Mapping[str, np.ndarray], block_size: int, rng: np.random.Generator
) -> Arrays:
    """Every tensor quantized with its own blocks; codes and scales packed in sorted order."""
    pairs = [quantize_int8(update[k], block_size, rng) for k in sorted(update)]
    empty8, empty32 = np.zeros(0, np.int8), np.zeros(0, np.float32)
    return {
        CODES: np.concatenate([c for c, _ in pairs]) if pairs else empty8,
        SCALES: np.concatenate([s for _, s in pairs]) if pairs else empty32,
    }


def encode_topk(update: Mapping[str, np.ndarray], ratio: float) -> tuple[Arrays, Arrays]:
    """``(encoded, residual)``: the top ``ratio`` of all entries by magnitude, and the rest.

    ``decode(encoded) + residual == update`` exactly (every entry goes to one side).
    """
    flat = _flat(update)
    total = flat.size
    if total > MAX_ENTRIES:
        raise ValueError(f"top-k supports at most {MAX_ENTRIES} trainable entries, got {total}")
    keep = min(total, topk_budget(total, ratio))
    idx = np.sort(np.argpartition(np.abs(flat), total - keep)[total - keep :]).astype(np.int32)
    val = flat[idx]
    rest = flat.copy()
    rest[idx] = 0.0
    shapes = {k: np.shape(v) for k, v in update.items()}
    return {IDX: idx, VAL: val}, _unflat(rest, shapes)


# ---- decoders (server side; the payload is untrusted) ----------------------------------------


def check_layout(
    record: ArrayRecord,
    kind: str,
    reference: Mapping[str, np.ndarray],
    block_size: int,
    ratio: float,
) -> None:
    """Keys, declared dtypes and shapes against what ``kind`` produces for ``reference``'s
    tensors, before any payload is parsed (a size bomb is refused here)."""
    want = list(PACKED.get(kind, reference))
    got = list(record.keys())
    if set(got) != set(want) or len(got) != len(want):
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        raise CodecError(f"{kind} update keys differ: missing={missing} extra={extra}")
    sizes = _sizes({k: tuple(v.shape) for k, v in reference.items()})
    total = sum(n for _, n in sizes)
    if kind == "topk":
        idx, val = record[IDX], record[VAL]
        _declared(IDX, idx.dtype, idx.shape, "int32", None)
        m, budget = int(idx.shape[0]), topk_budget(total, ratio)
        if m > min(total, budget):
            raise CodecError(f"{m} top-k entries exceed the budget {min(total, budget)}")
        _declared(VAL, val.dtype, val.shape, "float32", (m,))
    elif kind == "int8":
        nscales = sum(-(-n // block_size) for _, n in sizes)
        _declared(CODES, record[CODES].dtype, record[CODES].shape, "int8", (total,))
        _declared(SCALES, record[SCALES].dtype, record[SCALES].shape, "float32", (nscales,))
    elif kind == "fp16":
        for key, ref in reference.items():
            a = record[key]
            _declared(key, a.dtype, a.shape, "float16", tuple(ref.shape))
    else:
        raise CodecError(f"unknown compression kind {kind!r}")


def _declared(key: str, dtype: str, shape: object, want_dtype: str, want: tuple | None) -> None:
    shape = tuple(shape)  # type: ignore[arg-type]
    if dtype != want_dtype:
        raise CodecError(f"{key}: dtype {dtype}, expected {want_dtype}")
    if want is None:
        if len(shape) != 1:
            raise CodecError(f"{key}: shape {list(shape)}, expected one dimension")
    elif shape != want:
        raise CodecError(f"{key}: shape {list(shape)}, expected {list(want)}")


def decode_record(
    record: ArrayRecord,
    kind: str,
    reference: Mapping[str, np.ndarray],
    block_size: int = 256,
    ratio: float = 0.01,
) -> Arrays:
    """The dense float32 update of ``reference``'s tensors, or :class:`CodecError`."""
    check_layout(record, kind, reference, block_size, ratio)
    try:
        arrays = {k: array_view(v) for k, v in record.items()}
    except ValueError as e:
        raise CodecError(str(e)) from e
    return decode(arrays, kind, reference, block_size)


def decode(
    arrays: Mapping[str, np.ndarray],
    kind: str,
    reference: Mapping[str, np.ndarray],
    block_size: int = 256,
) -> Arrays:
    """Dense float32 tensors from parsed encoded arrays whose layout is already checked."""
    shapes = {k: tuple(v.shape) for k, v in reference.items()}
    if kind == "fp16":
        return {k: _finite(k, arrays[k]).astype(np.float32) for k in reference}
    if kind == "int8":
        return dequantize_int8(arrays[CODES], arrays[SCALES], shapes, block_size)
    if kind == "topk":
        return scatter_topk(arrays[IDX], arrays[VAL], shapes)
    raise CodecError(f"unknown compression kind {kind!r}")


def dequantize_int8(
    codes: np.ndarray, scales: np.ndarray, shapes: Mapping[str, tuple[int, ...]], block_size: int
) -> Arrays:
    if codes.size and int(codes.min()) < -INT8_LEVELS:
        raise CodecError(f"{CODES}: code -128 is outside [-127, 127]")
    _finite(SCALES, scales)
    if (scales < 0).any():
        raise CodecError(f"{SCALES}: negative scale")
    out: Arrays = {}
    start = first_scale = 0
    for k, n in _sizes(shapes):
        nb = -(-n // block_size)
        per_value = np.repeat(scales[first_scale : first_scale + nb], block_size)[:n]
        out[k] = (codes[start : start + n].astype(np.float32) * per_value).reshape(shapes[k])
        start, first_scale = start + n, first_scale + nb
    return out


def scatter_topk(idx: np.ndarray, val: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    total = sum(n for _, n in _sizes(shapes))
    if idx.size:
        if int(idx[0]) < 0 or int(idx[-1]) >= total:
            raise CodecError(f"{IDX}: position out of range [0, {total})")
        if idx.size > 1 and not (np.diff(idx.astype(np.int64)) > 0).all():
            raise CodecError(f"{IDX}: positions must be strictly increasing (no duplicates)")
    _finite(VAL, val)
    dense = np.zeros(total, dtype=np.float32)
    dense[idx] = val
    return _unflat(dense, shapes)


def _finite(key: str, a: np.ndarray) -> np.ndarray:
    if a.size and not np.isfinite(a).all():
        raise CodecError(f"{key}: contains NaN or Inf")
    return a


# ---- LoRA: the frozen base travels once ------------------------------------------------------


def base_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``arrays`` (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()
