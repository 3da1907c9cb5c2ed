"""``ReplyStore``: one round's accepted updates on disk, read back one coordinate chunk at a time.

Robust aggregation rules (coordinate-wise median, trimmed mean, Krum, centered clipping) need
every reply of a round at once; holding K model-sized updates in RAM (what Flower's FedMedian and
Krum do) makes server memory grow with the number of sites. The store writes each update to its
own file as it arrives and keeps only its metadata (site, weight, L2 norm); the rules
(``median.py``, ``trimmed_mean.py``, ``krum.py``, ``centered_clip.py``) then read ``(K, chunk)``
blocks, one tensor and one slice of coordinates at a time, so their RAM is one chunk of all
replies plus their output, whatever K is.

Layout: one raw file per reply, ``<index>.bin``, holding every tensor's bytes in C order, the
tensors in the order of the first reply's keys. Files are named by arrival index, never by site
name (a site's name is untrusted input, and would otherwise reach a file path). Each file is
written under a temporary name and renamed when complete, so a half-written reply is never read.

Reading uses positional ``readinto`` into one reused ``(K, chunk)`` buffer rather than
``np.memmap``: the bytes come from the page cache either way, but pages touched through a mapping
stay mapped (and counted in the process's resident memory) until it is unmapped, which over a full
pass is all K replies; a copy into one buffer keeps the process's own memory at one chunk.

The store is for one round: create it in the run directory, ``add`` each accepted reply, run the
rule, then ``close()`` (or use it as a context manager), which removes its files. Not durable
(no fsync): after a crash the round is redone, and its leftover directory can be deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Write and norm tensors in blocks of about this many elements (no model-sized temporaries).
_BLOCK = 1 << 20


@dataclass(frozen=True)
class _Layout:
    """Where one tensor lives inside every reply file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # in bytes from the start of the file
    size: int  # number of elements


class ReplyStore:
    """Accepted updates of one round, one file per reply, in a fresh directory under ``directory``.

    ``directory`` (created if missing) should be in the run directory; the store works in its own
    ``replies-*`` subdirectory (:attr:`path`), so two stores never collide and leftovers of a
    crashed round are never read. The first :meth:`add` fixes the keys, shapes and dtypes.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        parent = Path(directory)
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="replies-", dir=parent))
        # Removes the files even if close() is never called (garbage collection, interpreter exit).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)
        self._layout: dict[str, _Layout] = {}
        self._files: list[Path] = []
        self._sites: list[str] = []
        self._weights: list[float] = []
        self._norms: list[float] = []

    # ---- writing ----------------------------------------------------------------------------

    def add(
        self,
        site: str,
        update: Mapping[str, np.ndarray],
        weight: float,
        norm: float | None = None,
    ) -> None:
        """Write ``update`` (``key -> array``) to disk with its ``weight``; keep nothing in RAM.

        Raises ``ValueError`` when the keys, shapes or dtypes differ from the first reply's, when
        ``weight`` is not a finite number > 0, when a tensor is not floating point, or when
        ``site`` already replied this round. Nothing is stored then.
        """
        if not self._cleanup.alive:
            raise ValueError(f"the reply store {self.path} is closed")
        weight = float(weight)
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"site {site!r}: weight must be a finite number > 0, got {weight}")
        if site in self._sites:
            raise ValueError(f"site {site!r} already has a reply in this round's store")
        keys = list(update.keys())
        if not self._layout:
            layout = self._new_layout(site, update)
        else:
            layout = self._layout
            if keys != list(layout):
                raise ValueError(
                    f"site {site!r}: keys {_short(keys)} differ from the first reply's "
                    f"{_short(list(layout))}"
                )
            for k in keys:
                a, lay = update[k], layout[k]
                if not isinstance(a, np.ndarray):
                    raise ValueError(
                        f"site {site!r}: tensor {k!r} must be a numpy array, got {type(a).__name__}"
                    )
                if tuple(a.shape) != lay.shape or a.dtype != lay.dtype:
                    raise ValueError(
                        f"site {site!r}: tensor {k!r} is {a.dtype}{tuple(a.shape)}, "
                        f"expected {lay.dtype}{lay.shape}"
                    )
        index = len(self._files)
        final = self.path / f"{index:06d}.bin"
        tmp = self.path / f".{index:06d}.bin.tmp"
        sq = 0.0
        try:
            with open(tmp, "wb") as f:
                for k in layout:
                    sq += _write_c_order(f, update[k], squares=norm is None)
            os.replace(tmp, final)  # atomic: the final name only ever holds a complete reply
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not self._layout:
            self._layout = layout
        self._files.append(final)
        self._sites.append(site)
        self._weights.append(weight)
        # The norm the caller knows (the reply's, computed once) or the one summed while writing.
        self._norms.append(float(np.sqrt(sq)) if norm is None else norm)

    @staticmethod
    def _new_layout(site: str, update: Mapping[str, np.ndarray]) -> dict[str, _Layout]:
        if not update:
            raise ValueError(f"site {site!r}: empty update (no tensors)")
        layout: dict[str, _Layout] = {}
        offset = 0
        for k, a in update.items():
            if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
                raise ValueError(
                    f"site {site!r}: tensor {k!r} must be a floating-point numpy array, "
                    f"got {type(a).__name__} of dtype {getattr(a, 'dtype', None)}"
                )
            size = int(a.size)
            layout[k] = _Layout(tuple(a.shape), a.dtype, offset, size)
            offset += size * a.dtype.itemsize
        return layout

    def sort_by_site(self) -> None:
        """Order the replies by site name (metadata only; no file is moved or read).

        Rows are in arrival order until then, and arrival order changes from run to run. The
        rules break ties by row index and sum selected rows in row order, so calling this once
        every reply is in makes a round's result and records depend only on what was received,
        not on when: a rerun or a resumed run reproduces the same bits.
        """
        order = sorted(range(len(self)), key=self._sites.__getitem__)
        self._files = [self._files[i] for i in order]
        self._sites = [self._sites[i] for i in order]
        self._weights = [self._weights[i] for i in order]
        self._norms = [self._norms[i] for i in order]

    # ---- what was stored --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    @property
    def sites(self) -> list[str]:
        """Site names, in arrival order (row ``i`` of every chunk is ``sites[i]``)."""
        return list(self._sites)

    @property
    def weights(self) -> np.ndarray:
        """The weights given to :meth:`add`, shape ``(K,)``, float64."""
        return np.asarray(self._weights, dtype=np.float64)

    @property
    def norms(self) -> np.ndarray:
        """L2 norm of each update over all its tensors (computed while writing), ``(K,)``."""
        return np.asarray(self._norms, dtype=np.float64)

    @property
    def keys(self) -> list[str]:
        return list(self._layout)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: lay.shape for k, lay in self._layout.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {k: lay.dtype for k, lay in self._layout.items()}

    # ---- reading ----------------------------------------------------------------------------

    def chunks(
        self, key: str, chunk_elems: int, rows: Sequence[int] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, block)`` for tensor ``key`` flattened in C order, ``chunk_elems`` at a time.

        ``block`` has shape ``(len(rows), n)`` (all K replies when ``rows`` is None; row ``r`` is
        reply ``rows[r]``) and holds elements ``slice`` of each reply's flattened tensor. The
        block is one buffer reused for every chunk: use it before asking for the next one, and
        copy what must outlive it.
        """
        if key not in self._layout:
            raise KeyError(f"no tensor {key!r} in the store (keys: {_short(self.keys)})")
        if chunk_elems < 1:
            raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
        lay = self._layout[key]
        picked = range(len(self)) if rows is None else [int(r) for r in rows]
        if lay.size == 0 or not picked:
            return
        step = min(chunk_elems, lay.size)
        buf = np.empty((len(picked), step), dtype=lay.dtype)
        item = lay.dtype.itemsize
        files = []
        try:
            for r in picked:
                files.append(open(self._files[r], "rb", buffering=0))  # noqa: SIM115
            for start in range(0, lay.size, step):
                stop = min(start + step, lay.size)
                block = buf[:, : stop - start]
                for f, row in zip(files, block, strict=True):
                    f.seek(lay.offset + start * item)
                    view = memoryview(row).cast("B")
                    got = f.readinto(view)
                    if got != view.nbytes:
                        raise OSError(f"{f.name}: short read ({got} of {view.nbytes} bytes)")
                yield slice(start, stop), block
        finally:
            for f in files:
                f.close()

    # ---- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the store's directory and files. Idempotent."""
        self._cleanup()

    def __enter__(self) -> ReplyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReplyStore({str(self.path)!r}, replies={len(self)}, tensors={len(self._layout)})"


def _write_c_order(f, a: np.ndarray, squares: bool = True) -> float:
    """Write ``a``'s bytes in C order to ``f``; return the sum of its squares (float64; 0 when
    ``squares`` is False: the caller knows the norm).

    A C-contiguous array is written straight from its buffer; any other layout is copied out in
    blocks of leading-axis slices, so no model-sized temporary is made.
    """
    if a.ndim == 0 or a.flags.c_contiguous:
        flat = a.reshape(-1)
        f.write(memoryview(flat).cast("B"))
        return _sum_squares(flat) if squares else 0.0
    row = int(np.prod(a.shape[1:], dtype=np.int64))
    per = max(1, _BLOCK // max(row, 1))
    sq = 0.0
    for start in range(0, a.shape[0], per):
        block = np.ascontiguousarray(a[start : start + per]).reshape(-1)
        f.write(memoryview(block).cast("B"))
        sq += _sum_squares(block) if squares else 0.0
    return sq


def _sum_squares(flat: np.ndarray) -> float:
    total = 0.0
    for start in range(0, flat.size, _BLOCK):
        seg = flat[start : start + _BLOCK]
        # einsum, not a BLAS dot: see orchestrator.contract.privacy.update_norm
        total += float(np.einsum("i,i->", seg, seg, dtype=np.float64))
    return total


def _short(keys: list[str], n: int = 4) -> str:
    return str(keys[:n])[:-1] + (", ...]" if len(keys) > n else "]")
