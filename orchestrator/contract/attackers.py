"""Which simulated sites attack: both sides compute the same choice from the config.

The site uses it to decide whether to attack (``clients/pipeline.py``); the server only records
it in ``metrics.jsonl`` for analysis and never uses it to filter replies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def select_attackers(
    num_sites: int, fraction: float, sites: Sequence[int] | None, seed: int
) -> list[int]:
    """The malicious site ids, sorted.

    ``sites`` given (explicit ids in ``[0, num_sites)``, no duplicates): exactly those.
    Otherwise ``round(fraction * num_sites)`` distinct ids drawn without replacement by
    ``numpy.random.default_rng(seed)``, so the same ``(num_sites, fraction, seed)`` always names
    the same sites. ``fraction`` must be in ``[0, 1)``: an all-attacker federation has nothing
    left to attack. (``round`` is Python's: halves go to the even integer.)
    """
    if isinstance(num_sites, bool) or not isinstance(num_sites, (int, np.integer)):
        raise ValueError(f"federation.num_sites: got {num_sites!r}; allowed: an integer >= 1")
    if num_sites < 1:
        raise ValueError(f"federation.num_sites: got {num_sites}; allowed: an integer >= 1")
    if not (isinstance(fraction, (int, float, np.floating)) and 0.0 <= fraction < 1.0):
        raise ValueError(
            f"attack.fraction: got {fraction!r}; allowed: a float in [0, 1) "
            "(the share of sites that attack)"
        )
    if sites is not None:
        ids = list(sites)
        for s in ids:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise ValueError(f"attack.sites: got {ids!r}; allowed: integer site ids")
            if not 0 <= s < num_sites:
                raise ValueError(
                    f"attack.sites: got site id {s} in {ids!r}; allowed: ids in "
                    f"[0, federation.num_sites={num_sites})"
                )
        if len(set(ids)) != len(ids):
            raise ValueError(f"attack.sites: got {ids!r}; allowed: distinct site ids (no repeats)")
        return sorted(int(s) for s in ids)
    count = round(fraction * num_sites)
    rng = np.random.default_rng(seed)
    return sorted(int(s) for s in rng.choice(num_sites, size=count, replace=False))


# --------------------------------------------------------------------------------------------
# Simple Byzantine replies
