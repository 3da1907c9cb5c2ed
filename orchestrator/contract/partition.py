"""Split one labelled dataset into simulated sites: IID, Dirichlet over labels, natural by column.

Pure functions of (column values, number of sites, seed): every process that calls them (the
server printing its summary, each simulated site loading its slice) gets the same partitions.
"""

from __future__ import annotations

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
    y = np.asarray(labels)
    _check_sites(len(y), num_sites)
    rng = np.random.default_rng(seed)
    classes = sorted(set(y.tolist()))
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"dirichlet partition: could not give each of {num_sites} sites >= {min_size} rows with "
        f"alpha={alpha} over {len(y)} rows. Raise partition.alpha or lower federation.num_sites."
    )


def natural_partition(values: Sequence[str], num_sites: int) -> Partition:
    """One site per distinct value; with more values than sites, values are grouped.

    Grouping is greedy and deterministic: values sorted by (size desc, name) each go to the
    currently smallest site, so sizes stay balanced and no seed is needed.
    """
    v = np.asarray(values)
    groups = Counter(v.tolist())
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
    return [np.flatnonzero(np.isin(v, names)) for names in assigned]


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
        if column is None:
            raise ValueError("natural partition needs the partition column's values")
        return natural_partition(column, num_sites)
    raise ValueError(f"unknown partition kind {kind!r}: expected natural, dirichlet or iid")


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
