"""Where a robust rule reads one round's replies from: a ``ReplySource``.

A :class:`~strategies.reply_store.ReplyStore` (updates on disk, the server's case),
:class:`StackedReplies` (in memory: tests, small models) or a :class:`ReplyView` of either
(per-site norm-clipping scales and/or other weights). Rules read ``(K, chunk)`` blocks of one
tensor at a time, so their memory does not grow with the model or with K.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from orchestrator.contract.arrays import Arrays

# Each (K, chunk) block read from the replies holds about this many bytes; the rules' temporaries
# are a small multiple of it (a sorted copy, a float64 copy).
DEFAULT_CHUNK_BYTES = 4 << 20


# ---- where the replies come from -------------------------------------------------------------


@runtime_checkable
class ReplySource(Protocol):
    """K replies with the same tensors, read one ``(K, chunk)`` block at a time."""

    @property
    def keys(self) -> list[str]: ...

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    @property
    def dtypes(self) -> dict[str, np.dtype]: ...

    @property
    def sites(self) -> list[str]: ...

    @property
    def weights(self) -> np.ndarray: ...

    @property
    def norms(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def chunks(
        self, key: str, chunk_elems: int, rows: Sequence[int] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, block)``: elements ``slice`` of tensor ``key`` flattened in C order, one row
        per reply (``rows`` of them, all when None). The block may be reused or be a view of
        the source: read it, do not keep it or write into it."""
        ...


class StackedReplies:
    """Replies held in memory: ``arrays[key]`` has shape ``(K, *tensor_shape)``.

    A plain ``(K, ...)`` ndarray is one tensor named ``"x"``. ``weights`` default to 1, site
    names to ``"0" .. "K-1"``.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
        sites: Sequence[str] | None = None,
    ) -> None:
        if isinstance(arrays, np.ndarray):
            arrays = {"x": arrays}
        if not arrays:
            raise ValueError("no tensors")
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
        counts = {v.shape[0] if v.ndim else 0 for v in self._arrays.values()}
        if len(counts) != 1:
            raise ValueError(f"every tensor needs the same leading (replies) axis, got {counts}")
        (self._k,) = counts
        self._weights = np.ones(self._k) if weights is None else np.asarray(weights, np.float64)
        if self._weights.shape != (self._k,):
            raise ValueError(f"{self._k} replies but weights of shape {self._weights.shape}")
        self._sites = [str(i) for i in range(self._k)] if sites is None else list(sites)
        if len(self._sites) != self._k:
            raise ValueError(f"{self._k} replies but {len(self._sites)} site names")

    @property
    def keys(self) -> list[str]:
        return list(self._arrays)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self._arrays.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {k: v.dtype for k, v in self._arrays.items()}

    @property
    def sites(self) -> list[str]:
        return list(self._sites)

    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    @property
    def norms(self) -> np.ndarray:
        sq = np.zeros(self._k)
        for v in self._arrays.values():
            flat = v.reshape(self._k, -1).astype(np.float64)
            sq += np.einsum("ij,ij->i", flat, flat)
        return np.sqrt(sq)

    def __len__(self) -> int:
        return self._k

    def chunks(
        self, key: str, chunk_elems: int, rows: Sequence[int] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        if chunk_elems < 1:
            raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
        flat = self._arrays[key].reshape(self._k, -1)
        if rows is not None:
            flat = flat[np.asarray(rows, dtype=np.intp)]
        for start in range(0, flat.shape[1], chunk_elems):
            sl = slice(start, min(start + chunk_elems, flat.shape[1]))
            yield sl, flat[:, sl]


class ReplyView:
    """``source`` with each reply ``i`` multiplied by ``scales[i]`` (norm clipping) and/or with
    other ``weights`` (e.g. :func:`effective_weights`). Nothing is copied up front; each block
    is scaled as it is read."""

    def __init__(
        self,
        source: ReplySource,
        *,
        scales: Sequence[float] | np.ndarray | None = None,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        k = len(source)
        self.source = source
        self.scales = None if scales is None else np.asarray(scales, dtype=np.float64)
        if self.scales is not None and self.scales.shape != (k,):
            raise ValueError(f"{k} replies but scales of shape {self.scales.shape}")
        self._weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self._weights is not None and self._weights.shape != (k,):
            raise ValueError(f"{k} replies but weights of shape {self._weights.shape}")

    @property
    def keys(self) -> list[str]:
        return self.source.keys

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.source.shapes

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return self.source.dtypes

    @property
    def sites(self) -> list[str]:
        return self.source.sites

    @property
    def weights(self) -> np.ndarray:
        return self.source.weights if self._weights is None else self._weights.copy()

    @property
    def norms(self) -> np.ndarray:
        n = self.source.norms
        return n if self.scales is None else n * self.scales

    def __len__(self) -> int:
        return len(self.source)

    def chunks(
        self, key: str, chunk_elems: int, rows: Sequence[int] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        if self.scales is None:
            yield from self.source.chunks(key, chunk_elems, rows)
            return
        s = self.scales if rows is None else self.scales[np.asarray(rows, dtype=np.intp)]
        for sl, block in self.source.chunks(key, chunk_elems, rows):
            yield sl, block * s.astype(block.dtype)[:, None]


def as_source(replies: ReplySource | np.ndarray) -> ReplySource:
    """A reply source for ``replies`` (a ``(K, ...)`` array is one tensor named ``"x"``)."""
    src = StackedReplies(replies) if isinstance(replies, np.ndarray) else replies
    if len(src) == 0:
        raise ValueError("no replies to aggregate")
    return src


def chunk_size(src: ReplySource, chunk_elems: int | None) -> int:
    """Coordinates per block: ``chunk_elems``, or about DEFAULT_CHUNK_BYTES per (K, chunk)."""
    if chunk_elems is not None:
        if chunk_elems < 1:
            raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
        return int(chunk_elems)
    item = max(np.dtype(d).itemsize for d in src.dtypes.values())
    return max(1024, DEFAULT_CHUNK_BYTES // (item * len(src)))


def empty_like(src: ReplySource) -> Arrays:
    """Output tensors, in the replies' dtype (float32 at least), C order."""
    return {k: np.empty(src.shapes[k], np.result_type(src.dtypes[k], np.float32)) for k in src.keys}
