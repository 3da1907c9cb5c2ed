"""Partitioners: every row lands in exactly one site, same seed = same split, skew as asked."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from orchestrator.contract.partition import (
    dirichlet_partition,
    iid_partition,
    natural_partition,
    partition,
    summary,
    train_eval_split,
)


def _is_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(set(allidx.tolist())) == n


def test_iid_sizes_cover_and_reproducible():
    parts = iid_partition(103, 4, seed=1)
    _is_partition(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert all((a == b).all() for a, b in zip(parts, iid_partition(103, 4, 1), strict=True))
    assert any((a != b).any() for a, b in zip(parts, iid_partition(103, 4, 2), strict=True))


def test_dirichlet_reproducible_and_skew_follows_alpha():
    labels = ["a"] * 500 + ["b"] * 500 + ["c"] * 500
    p1 = dirichlet_partition(labels, 5, alpha=0.1, seed=3)
    _is_partition(p1, 1500)
    assert all(
        (a == b).all() for a, b in zip(p1, dirichlet_partition(labels, 5, 0.1, 3), strict=True)
    )
    y = np.asarray(labels)

    def mean_top_share(parts):
        return np.mean([Counter(y[p].tolist()).most_common(1)[0][1] / len(p) for p in parts])

    skewed = mean_top_share(p1)
    near_iid = mean_top_share(dirichlet_partition(labels, 5, alpha=1000.0, seed=3))
    assert skewed > 0.6 > near_iid  # alpha small: one label dominates each site
    assert near_iid < 0.4


def test_natural_groups_values_into_sites_deterministically():
    values = ["x"] * 50 + ["y"] * 30 + ["z"] * 20 + ["w"] * 10
    parts = natural_partition(values, 2)
    _is_partition(parts, 110)
    groups = [sorted(set(np.asarray(values)[p].tolist())) for p in parts]
    assert groups == [["x", "w"], ["y", "z"]] or groups == [["w", "x"], ["y", "z"]]
    with pytest.raises(ValueError, match="num_sites=5"):
        natural_partition(values, 5)


def test_dispatch_summary_and_train_eval_split():
    labels = ["pos", "neg"] * 50
    parts = partition("iid", labels, None, 2, 0.5, 0)
    rows = summary(parts, labels)
    assert [r["size"] for r in rows] == [50, 50]
    assert sum(r["labels"]["pos"] for r in rows) == 50
    tr, ev = train_eval_split(parts[0], 0.2, seed=0)
    assert len(ev) == 10 and len(tr) == 40 and not set(tr) & set(ev)
    tr2, ev2 = train_eval_split(parts[0], 0.2, seed=0, cap=20)
    assert len(tr2) + len(ev2) == 20


@pytest.mark.parametrize(("kind", "k"), [("iid", 7), ("dirichlet", 9), ("natural", 4)])
def test_lazy_site_slices_equal_the_eager_partition(kind, k):
    # A simulated site computes only its own slice (lazy); it must be the eager one exactly.
    from orchestrator.contract.partition import site_indices, site_sizes

    rng = np.random.default_rng(0)
    y = rng.choice(["neg", "neu", "pos"], size=400).tolist()
    col = rng.choice(list("pqrstu"), size=400).tolist()
    eager = partition(kind, y, col, k, 0.3, 5)
    for site in range(k):
        np.testing.assert_array_equal(site_indices(kind, y, col, k, 0.3, 5, site), eager[site])
    assert site_sizes(kind, y, col, k, 0.3, 5).tolist() == [len(p) for p in eager]
    with pytest.raises(ValueError, match="not in"):
        site_indices(kind, y, col, k, 0.3, 5, k)


def test_site_sizes_of_a_large_population_without_slicing():
    from orchestrator.contract.partition import site_sizes

    sizes = site_sizes("iid", ["a"] * 20_003, None, 10_000, 1.0, 0)
    assert sizes.sum() == 20_003 and sizes.min() == 2 and (sizes == 3).sum() == 3


def test_dirichlet_draw_is_computed_once_per_process_and_keyed_on_the_labels(monkeypatch):
    """A simulation process serves many sites: the (costly) resampled draw is cached, keyed on the
    label values and parameters, and a cached slice equals a fresh computation."""
    import orchestrator.contract.partition as part

    labels = [f"c{i % 3}" for i in range(600)]
    fresh = [part.site_indices("dirichlet", labels, None, 40, 0.5, 7, s) for s in range(40)]
    calls = []
    real = part._draw_uncached
    monkeypatch.setattr(part, "_draw_uncached", lambda *a: calls.append(a) or real(*a))
    part._DRAW_CACHE.clear()
    again = [part.site_indices("dirichlet", labels, None, 40, 0.5, 7, s) for s in range(40)]
    assert len(calls) == 1
    assert all((a == b).all() for a, b in zip(fresh, again, strict=True))
    # Other labels (same length), another seed or object-dtype values of the same strings.
    other = [f"c{(i + 1) % 3}" for i in range(600)]
    part.site_indices("dirichlet", other, None, 40, 0.5, 7, 0)
    part.site_indices("dirichlet", labels, None, 40, 0.5, 8, 0)
    assert len(calls) == 3
    obj = np.asarray(labels, dtype=object)
    assert (part.site_indices("dirichlet", obj, None, 40, 0.5, 7, 3) == fresh[3]).all()
    assert len(calls) == 3
    with pytest.raises(ValueError):  # shared arrays cannot be changed by one caller
        part._dirichlet_draw(np.asarray(labels), 40, 0.5, 7)[0][0][0] = 1
