"""Split one labelled dataset into simulated sites: IID, Dirichlet over labels, natural by column.

Pure functions of (column values, number of sites, seed): every process that calls them (the
server printing its summary, each simulated site loading its slice) gets the same partitions.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

Partition = list[np.ndarray]
"""Index arrays into the dataset, one per site, each sorted ascending."""


def iid_partition(n: int, num_sites: int, seed: int) -> Partition:
    """Shuffle ``n`` rows and deal them into ``num_sites`` near-equal parts."""
    _check_sites(n, num_sites)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_sites)]


def dirichlet_partition(
    labels: Sequence[str], num_sites: int, alpha: float, seed: int, min_size: int = 2
) -> Partition:
    """Per class, split its rows over sites with proportions ~ Dirichlet(alpha).

    Resampled (same RNG stream, so still reproducible) until every site has ``min_size`` rows;
    a tiny alpha with many sites may need several draws.
    """
    draw = _dirichlet_draw(np.asarray(labels), num_sites, alpha, seed, min_size)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for idx, cuts in draw:
        for site, chunk in enumerate(np.split(idx, cuts)):
            parts[site].append(chunk)
    return [np.sort(np.concatenate(p).astype(np.int64)) for p in parts]


def natural_partition(values: Sequence[str], num_sites: int) -> Partition:
    """One site per distinct value; with more values than sites, values are grouped.

    Grouping is greedy and deterministic: values sorted by (size desc, name) each go to the
    currently smallest site, so sizes stay balanced and no seed is needed.
    """
    v = np.asarray(values)
    return [np.flatnonzero(np.isin(v, names)) for names in _natural_groups(v, num_sites)]


def partition(
    kind: str,
    labels: Sequence[str],
    column: Sequence[str] | None,
    num_sites: int,
    alpha: float,
    seed: int,
) -> Partition:
    """Dispatch on ``partition.kind``."""
    if kind == "iid":
        return iid_partition(len(labels), num_sites, seed)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_sites, alpha, seed)
    if kind == "natural":
        return natural_partition(_natural_column(column), num_sites)
    raise _unknown_kind(kind)


# ---- lazy: one site's rows (or every site's size) without building every site's index list ----
# A simulated site computes only its own slice when it is sampled, so a round's cost depends on
# the sites sampled, not on how many exist. Each function consumes the same random stream as its
# eager counterpart above, so both agree exactly (tests/unit/test_partition.py checks it).


def _iid_bounds(n: int, num_sites: int, site: int) -> tuple[int, int]:
    """``np.array_split``'s slice of ``site``: the first ``n % K`` parts are one row longer."""
    base, extra = divmod(n, num_sites)
    start = site * base + min(site, extra)
    return start, start + base + (1 if site < extra else 0)


def _natural_groups(values: np.ndarray, num_sites: int) -> list[list[str]]:
    groups = Counter(values.tolist())
    if len(groups) < num_sites:
        raise ValueError(
            f"natural partition: the column has {len(groups)} distinct values "
            f"({', '.join(sorted(groups))}) but federation.num_sites={num_sites}. Lower "
            "federation.num_sites, or use partition.kind=dirichlet or iid."
        )
    assigned: list[list[str]] = [[] for _ in range(num_sites)]
    sizes = [0] * num_sites
    for name, size in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        site = min(range(num_sites), key=lambda s: (sizes[s], s))
        assigned[site].append(name)
        sizes[site] += size
    return assigned


# A simulation process serves many sites of one federation, and a large population with few rows
# per site can take hundreds of resampling attempts: draw once per process, not per site.
_DRAW_CACHE: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}
_DRAW_CACHE_MAX = 4


def _dirichlet_draw(
    y: np.ndarray, num_sites: int, alpha: float, seed: int, min_size: int = 2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: its shuffled rows and the cut points over sites (the accepted draw).

    The arrays are shared between callers (cached) and read-only."""
    _check_sites(len(y), num_sites)
    if y.dtype == object:  # hash the values, not the object pointers
        y = y.astype(str)
    key = (hashlib.sha256(y.tobytes()).hexdigest(), y.dtype.str, num_sites, alpha, seed, min_size)
    if key not in _DRAW_CACHE:
        if len(_DRAW_CACHE) >= _DRAW_CACHE_MAX:
            _DRAW_CACHE.pop(next(iter(_DRAW_CACHE)))
        _DRAW_CACHE[key] = _draw_uncached(y, num_sites, alpha, seed, min_size)
    return _DRAW_CACHE[key]


def _draw_uncached(
    y: np.ndarray, num_sites: int, alpha: float, seed: int, min_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in sorted(set(y.tolist()))]
    for _ in range(1000):
        draw, sizes = [], np.zeros(num_sites, dtype=np.int64)
        for rows in by_class:
            idx = rows.copy()  # each attempt shuffles the class's rows from the same order
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            idx.flags.writeable = cuts.flags.writeable = False
            draw.append((idx, cuts))
            sizes += np.diff(np.concatenate(([0], cuts, [len(idx)])))
        if sizes.min() >= min_size:
            return draw
    raise ValueError(
        f"dirichlet partition: could not give each of {num_sites} sites >= {min_size} rows with "
        f"alpha={alpha} over {len(y)} rows. Raise partition.alpha or lower federation.num_sites."
    )


def site_indices(
    kind: str,
    labels: Sequence[str],
    column: Sequence[str] | None,
    num_sites: int,
    alpha: float,
    seed: int,
    site: int,
) -> np.ndarray:
    """Site ``site``'s rows (sorted), equal to ``partition(...)[site]``, computing only them."""
    if not 0 <= site < num_sites:
        raise ValueError(f"site {site} is not in [0, {num_sites})")
    if kind == "iid":
        _check_sites(len(labels), num_sites)
        perm = np.random.default_rng(seed).permutation(len(labels))
        lo, hi = _iid_bounds(len(labels), num_sites, site)
        return np.sort(perm[lo:hi])
    if kind == "dirichlet":
        chunks = []
        for idx, cuts in _dirichlet_draw(np.asarray(labels), num_sites, alpha, seed):
            edges = np.concatenate(([0], cuts, [len(idx)]))
            chunks.append(idx[edges[site] : edges[site + 1]])
        return np.sort(np.concatenate(chunks).astype(np.int64))
    if kind == "natural":
        v = np.asarray(_natural_column(column))
        return np.flatnonzero(np.isin(v, _natural_groups(v, num_sites)[site]))
    raise _unknown_kind(kind)


def site_sizes(
    kind: str,
    labels: Sequence[str],
    column: Sequence[str] | None,
    num_sites: int,
    alpha: float,
    seed: int,
) -> np.ndarray:
    """Every site's row count, without any site's index list (checks a large population)."""
    if kind == "iid":
        _check_sites(len(labels), num_sites)
        base, extra = divmod(len(labels), num_sites)
        return base + (np.arange(num_sites) < extra).astype(np.int64)
    if kind == "dirichlet":
        sizes = np.zeros(num_sites, dtype=np.int64)
        for idx, cuts in _dirichlet_draw(np.asarray(labels), num_sites, alpha, seed):
            sizes += np.diff(np.concatenate(([0], cuts, [len(idx)])))
        return sizes
    if kind == "natural":
        v = np.asarray(_natural_column(column))
        counts = Counter(v.tolist())
        groups = _natural_groups(v, num_sites)
        return np.array([sum(counts[name] for name in g) for g in groups])
    raise _unknown_kind(kind)


def train_eval_split(
    indices: np.ndarray, eval_fraction: float, seed: int, cap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A site's local train / held-out split (after an optional cap on its size)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(np.asarray(indices))
    if cap is not None:
        idx = idx[:cap]
    n_eval = max(1, round(len(idx) * eval_fraction))
    return np.sort(idx[n_eval:]), np.sort(idx[:n_eval])


def summary(parts: Partition, labels: Sequence[str]) -> list[dict[str, object]]:
    """Per-site size and label counts (what ``fedray simulate`` prints before round 1)."""
    y = np.asarray(labels)
    rows = []
    for site, idx in enumerate(parts):
        counts = Counter(y[idx].tolist())
        rows.append({"site": site, "size": len(idx), "labels": dict(sorted(counts.items()))})
    return rows


def _check_sites(n: int, num_sites: int) -> None:
    if num_sites < 1 or n < num_sites:
        raise ValueError(f"cannot split {n} rows into {num_sites} sites")


def _natural_column(column: Sequence[str] | None) -> Sequence[str]:
    if column is None:
        raise ValueError("natural partition needs the partition column's values")
    return column


def _unknown_kind(kind: str) -> ValueError:
    return ValueError(f"unknown partition kind {kind!r}: expected natural, dirichlet or iid")
