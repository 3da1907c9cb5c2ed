"""Which sequences each worker sees at each step: pure functions, no processes.

The global batch of step ``s`` is fixed by (seed, step) alone, whatever the number of workers:
sample ``i = s * global_batch + j`` comes from epoch ``i // n`` in that epoch's permutation.
Workers then take disjoint micro-batches of it. So the data position is fully described by the
step number (resume is exact), and 1 worker x 2 accumulation steps sees the same global batch as
2 workers x 1 step (DDP equivalence).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(
    maxsize=2
)  # a step needs at most two epochs; permuting millions of blocks per step shows
def epoch_permutation(n: int, epoch: int, seed: int) -> np.ndarray:
    """The sample order of one epoch (deterministic in ``seed`` and ``epoch``); read-only, cached."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def global_batch_indices(step: int, global_batch: int, n: int, seed: int) -> np.ndarray:
    """Indices (into ``n`` training sequences) of the global batch of ``step`` (0-based)."""
    if n <= 0:
        raise ValueError("no training sequences")
    positions = np.arange(step * global_batch, (step + 1) * global_batch, dtype=np.int64)
    epochs = positions // n
    out = np.empty(global_batch, dtype=np.int64)
    for e in np.unique(epochs):
        mask = epochs == e
        out[mask] = epoch_permutation(n, int(e), seed)[positions[mask] % n]
    return out


def micro_batches_for_rank(
    batch: np.ndarray, rank: int, world_size: int, micro_batch: int, accum_steps: int
) -> list[np.ndarray]:
    """Split a global batch into this rank's ``accum_steps`` micro-batches (disjoint across ranks)."""
    expected = world_size * micro_batch * accum_steps
    if len(batch) != expected:
        raise ValueError(
            f"global batch of {len(batch)} != {world_size}x{micro_batch}x{accum_steps}"
        )
    out = []
    for a in range(accum_steps):
        start = (a * world_size + rank) * micro_batch
        out.append(batch[start : start + micro_batch])
    return out


def eval_indices_for_rank(n_val: int, rank: int, world_size: int, limit: int) -> np.ndarray:
    """This rank's validation sequences: a strided, disjoint slice, at most ``limit`` long."""
    return np.arange(rank, n_val, world_size, dtype=np.int64)[:limit]


def eval_batches_for_rank(
    n_val: int, rank: int, world_size: int, micro_batch: int, max_batches: int
) -> list[tuple[np.ndarray, int]]:
    """This rank's validation micro-batches as ``(rows, n_real)``: ``rows[:n_real]`` are its own
    sequences (:func:`eval_indices_for_rank`), the rest padding whose loss must not count.

    Every rank gets the same number of micro-batches (the most any rank needs), because a
    ZeRO-3 forward gathers parameters collectively: a rank that stopped early would leave the
    others waiting forever. A rank with nothing left runs one padding row (block 0)."""
    limit = max_batches * micro_batch
    own = eval_indices_for_rank(n_val, rank, world_size, limit)
    most = len(eval_indices_for_rank(n_val, 0, world_size, limit))  # rank 0 has the most
    out = []
    for b in range(-(-most // micro_batch)):
        real = own[b * micro_batch : (b + 1) * micro_batch]
        out.append((real, len(real)) if len(real) else (np.zeros(1, dtype=np.int64), 0))
    return out
