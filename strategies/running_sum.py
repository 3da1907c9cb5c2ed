"""The fold: a running weighted sum of updates, and the server's SGD step on it.

Sites send updates ``delta_k = w_k - w`` (trainable tensors only) with a weight ``n_k`` (their
number of training examples, or 1). The plain-averaging strategies fold replies one at a time
into a :class:`RunningSum` (memory: one update-sized sum whatever the number of sites), then
take the server step (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):

    delta = sum_k n_k * delta_k / sum_k n_k
    w <- w + eta * delta                       (:func:`apply_sgd_from_sum`; eta = 1: FedAvg)

The adaptive steps (FedAdam & co.) are in ``strategies/fedopt.py``, momentum in ``fedavgm.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from orchestrator.contract.arrays import Arrays

# Fold in chunks of this many elements: the scaled chunk stays in cache, so folding costs one
# read of the update and one read+write of the sum, with no model-sized temporary.
_CHUNK = 1 << 16


def fold_into(acc: np.ndarray, update: np.ndarray, weight: float) -> None:
    """``acc += weight * update`` in place, without allocating a temporary of the update's size."""
    a = acc.reshape(-1)
    u = update.reshape(-1)
    w = acc.dtype.type(weight)
    if a.size <= _CHUNK:
        a += w * u
        return
    scratch = np.empty(_CHUNK, dtype=acc.dtype)
    for start in range(0, a.size, _CHUNK):
        stop = min(start + _CHUNK, a.size)
        s = scratch[: stop - start]
        np.multiply(u[start:stop], w, out=s)
        a[start:stop] += s


class RunningSum:
    """``sum_k n_k * delta_k`` and ``sum_k n_k``, folded one reply at a time.

    Memory: one array per key (the size of one update, in ``dtype``) whatever the number of
    replies. Replies are folded in the order they arrive, which varies from run to run. In the
    default float64 the sum of float32 updates is (almost always) exact, so the mean rounded
    back to float32 is the same bits in any order: a rerun or a resumed run reproduces the same
    model. A float32 sum halves the memory, but its last bit depends on the arrival order.
    """

    def __init__(self, dtype: np.dtype | type = np.float64) -> None:
        self.dtype = np.dtype(dtype)
        self.sums: Arrays = {}
        self.out_dtypes: dict[str, np.dtype] = {}
        self.total_weight = 0.0
        self.count = 0

    @classmethod
    def of_mean(cls, mean: Mapping[str, np.ndarray], count: int) -> RunningSum:
        """A sum whose ``mean()`` is ``mean`` (total weight 1): how a rule that computes its
        aggregate directly (median, Krum, ...) hands it to the server step."""
        acc = cls(np.float32)
        for key, value in mean.items():
            acc.sums[key] = np.ascontiguousarray(value)
            acc.out_dtypes[key] = np.result_type(value.dtype, np.float32)
        acc.total_weight, acc.count = 1.0, count
        return acc

    @classmethod
    def of_sum(
        cls, total: Mapping[str, np.ndarray], count: int, out_dtypes: Mapping[str, np.dtype]
    ) -> RunningSum:
        """A float64 sum of ``count`` equally weighted updates folded elsewhere (secure
        aggregation unmasks only the sum): ``mean()`` divides by ``count``."""
        acc = cls(np.float64)
        acc.sums = {k: np.ascontiguousarray(v, np.float64) for k, v in total.items()}
        acc.out_dtypes = dict(out_dtypes)
        acc.total_weight, acc.count = float(count), count
        return acc

    def fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        for key, value in update.items():
            acc = self.sums.get(key)
            if acc is None:
                # First reply: the sum starts as a scaled copy. The mean comes back in the
                # update's dtype (float32 at least: a bf16 mean loses too much).
                dtype = np.result_type(value.dtype, self.dtype)
                # C order: the chunked in-place passes work on flat views of it.
                self.sums[key] = np.multiply(value, dtype.type(weight), dtype=dtype, order="C")
                self.out_dtypes[key] = np.result_type(value.dtype, np.float32)
            else:
                fold_into(acc, value, weight)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Arrays:
        """The weighted mean update, in the updates' dtype (float32 at least); consumes the sums."""
        if self.count == 0:
            raise ValueError("no update was folded")
        inv = 1.0 / self.total_weight
        out: Arrays = {}
        for key, acc in self.sums.items():
            dtype = self.out_dtypes[key]
            if acc.dtype == dtype:
                acc *= acc.dtype.type(inv)
                out[key] = acc
            else:
                out[key] = np.empty(acc.shape, dtype)
                for s, o in _chunks(acc, out[key]):
                    np.multiply(s, inv, out=s)
                    o[...] = s  # rounds once, to the output dtype
        self.sums = {}
        return out


def _chunks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Matching cache-sized slices of same-shaped arrays, flattened in C order (views of
    C-contiguous arrays; others are read from a copy, so only those may be written to)."""
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, flat[0].size, _CHUNK):
        yield tuple(f[start : start + _CHUNK] for f in flat)


def scale_add_into(out: np.ndarray, scale: float, base: np.ndarray) -> None:
    """``out = scale * out + base`` in place, chunked (one pass, no model-sized temporary)."""
    o, b = out.reshape(-1), base.reshape(-1)
    k = out.dtype.type(scale)
    for start in range(0, o.size, _CHUNK):
        stop = min(start + _CHUNK, o.size)
        seg = o[start:stop]
        seg *= k
        seg += b[start:stop]


def apply_sgd_from_sum(global_: Mapping[str, np.ndarray], acc: RunningSum, eta: float) -> Arrays:
    """``w + eta * sum / total`` with the mean and the step fused into one pass over the sums,
    which are consumed (reused as output buffers, or as scratch when the sum is wider)."""
    if acc.count == 0:
        raise ValueError("no update was folded")
    scale = eta / acc.total_weight
    out = dict(global_)
    for k, s in acc.sums.items():
        g = global_[k]
        if s.dtype == g.dtype:
            scale_add_into(s, scale, g)
            out[k] = s
        else:
            # Wider sum: compute w + scale * s in the sum's precision, round once.
            out[k] = np.empty(g.shape, g.dtype)  # C order, like the sum
            for s_c, g_c, o_c in _chunks(s, g, out[k]):
                s_c *= s_c.dtype.type(scale)
                s_c += g_c
                o_c[...] = s_c
    acc.sums = {}
    return out
