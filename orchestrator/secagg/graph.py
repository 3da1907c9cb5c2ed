"""SecAgg+'s communication graph: each site pairs (masks and shares) with ``k`` neighbours only.

Bell et al. (2020) replace SecAgg's complete graph with a sparse random graph of degree
``k = O(log n)``: a site's work and upload then grow with ``k``, not ``n``. Here the graph is a
Harary-style ring: the sites are put in a random order drawn from the round nonce, and each is
joined to the ``k / 2`` sites before and after it. ``k >= n - 1`` is the complete graph (SecAgg,
Bonawitz et al. 2017). Both sides compute the graph from the nonce, so a site can check that
the neighbours the server names are its own.
"""

from __future__ import annotations

import hashlib

import numpy as np


def neighbours(num_sites: int, degree: int, nonce: bytes) -> dict[int, frozenset[int]]:
    """Site id (1..n) -> its neighbours (never itself); symmetric."""
    ids = list(range(1, num_sites + 1))
    if degree >= num_sites - 1:
        return {i: frozenset(j for j in ids if j != i) for i in ids}
    seed = int.from_bytes(hashlib.sha256(b"fedray-secagg-graph" + nonce).digest(), "little")
    order = np.random.default_rng(seed).permutation(ids).tolist()
    half = max(1, degree // 2)
    out: dict[int, set[int]] = {i: set() for i in ids}
    for pos, i in enumerate(order):
        for d in range(1, half + 1):
            j = order[(pos + d) % num_sites]
            out[i].add(j)
            out[j].add(i)
    return {i: frozenset(v) for i, v in out.items()}
