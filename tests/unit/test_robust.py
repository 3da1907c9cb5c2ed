"""Robust aggregation rules: hand-worked values, chunked == unchunked, store == memory."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from orchestrator.contract.privacy import update_norm
from strategies.centered_clip import centered_clipping
from strategies.krum import krum, krum_scores, multi_krum, pairwise_sq_distances
from strategies.median import coordinate_median
from strategies.norm_clip import clip_update_norms
from strategies.reply_sources import ReplyView, StackedReplies
from strategies.reply_store import ReplyStore
from strategies.trimmed_mean import trimmed_mean, trimmed_per_side
from strategies.weighted_mean import effective_weights, weighted_mean

# Four replies of a 2-coordinate tensor, used by the median and trimmed-mean cases.
#            coord 0  coord 1
X4 = np.array(
    [
        [1.0, 10.0],  # site 0
        [4.0, 0.0],  # site 1
        [2.0, -6.0],  # site 2
        [100.0, 3.0],  # site 3
    ],
    dtype=np.float32,
)


# ---- coordinate-wise median ------------------------------------------------------------------


def test_median_of_three():
    x = np.array([[1, 5, -2], [3, 0, 4], [2, 9, 1]], dtype=np.float32)
    # coord 0: {1, 3, 2} -> 2;  coord 1: {5, 0, 9} -> 5;  coord 2: {-2, 4, 1} -> 1
    np.testing.assert_array_equal(coordinate_median(x)["x"], [2, 5, 1])


def test_median_of_four_is_the_mean_of_the_middle_two():
    # coord 0: sorted 1, 2, 4, 100 -> (2 + 4) / 2 = 3;  coord 1: -6, 0, 3, 10 -> (0 + 3) / 2 = 1.5
    out = coordinate_median(X4)["x"]
    np.testing.assert_array_equal(out, [3.0, 1.5])
    assert out.dtype == np.float32


def test_median_ignores_weights_and_keeps_shapes():
    x = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 2, 2),
        "b": np.array([[1.0], [9.0], [5.0]]),
    }
    src = StackedReplies(x, weights=[1e9, 1, 1])
    out = coordinate_median(src)
    # 3 replies: the median of w is the middle reply, 4..7; b: {1, 9, 5} -> 5
    np.testing.assert_array_equal(out["w"], np.arange(4, 8).reshape(2, 2))
    np.testing.assert_array_equal(out["b"], [5.0])
    assert out["b"].dtype == np.float64


# ---- trimmed mean ----------------------------------------------------------------------------


def test_trimmed_mean_quarter_of_four():
    # beta = 0.25, K = 4 -> b = 1 dropped at each end of every coordinate.
    # coord 0: sorted 1 (site 0), 2 (site 2), 4 (site 1), 100 (site 3): drop sites 0 (low) and
    #          3 (high); mean(2, 4) = 3
    # coord 1: sorted -6 (site 2), 0 (site 1), 3 (site 3), 10 (site 0): drop sites 2 (low) and
    #          0 (high); mean(0, 3) = 1.5
    r = trimmed_mean(X4, 0.25)
    np.testing.assert_array_equal(r.arrays["x"], [3.0, 1.5])
    assert r.trimmed_per_side == 1
    np.testing.assert_array_equal(r.trimmed_low, [1, 0, 1, 0])
    np.testing.assert_array_equal(r.trimmed_high, [1, 0, 0, 1])
    np.testing.assert_array_equal(r.trimmed, [2, 0, 1, 1])


def test_trimmed_mean_below_one_per_side_is_the_plain_mean():
    # beta = 0.2, K = 4 -> floor(0.8) = 0: coord 0 = (1 + 4 + 2 + 100) / 4 = 26.75,
    # coord 1 = (10 + 0 - 6 + 3) / 4 = 1.75
    r = trimmed_mean(X4, 0.2)
    np.testing.assert_array_equal(r.arrays["x"], [26.75, 1.75])
    assert r.trimmed_per_side == 0 and not r.trimmed.any()


def test_trimmed_mean_ties_are_ranked_by_reply_index():
    r = trimmed_mean(np.ones((4, 3), np.float32), 0.25)
    np.testing.assert_array_equal(r.arrays["x"], [1, 1, 1])
    np.testing.assert_array_equal(r.trimmed_low, [3, 0, 0, 0])  # first reply counts as lowest
    np.testing.assert_array_equal(r.trimmed_high, [0, 0, 0, 3])  # last reply as highest


def test_trimmed_per_side():
    assert trimmed_per_side(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in binary
    assert trimmed_per_side(10, 0.3) == 3
    assert trimmed_per_side(7, 0.1) == 0
    assert trimmed_per_side(2, 0.4999999999999) == 0  # never drops everything
    for bad in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\)"):
            trimmed_per_side(10, bad)


# ---- Krum / Multi-Krum -----------------------------------------------------------------------

# Five honest replies around (0.5, 0.5) and two Byzantine ones far away.
KRUM_X = np.array(
    [
        [0.0, 0.0],  # 0
        [1.0, 0.0],  # 1
        [0.0, 1.0],  # 2
        [1.0, 1.0],  # 3
        [0.5, 0.5],  # 4
        [100.0, 100.0],  # 5 Byzantine
        [100.0, 101.0],  # 6 Byzantine
    ],
    dtype=np.float32,
)
# f = 2, K = 7 > 2f + 2 = 6; each score sums the K - f - 2 = 3 smallest squared distances.
# Honest squared distances: d01 = d02 = d13 = d23 = 1, d03 = d12 = 2, d_i4 = 0.5 for i < 4.
#   score_0 = 0.5 + 1 + 1 = 2.5 (same for 1, 2, 3);  score_4 = 0.5 * 3 = 1.5
#   score_5 = d56 + d53 + d54 = 1 + (99^2 + 99^2) + 2 * 99.5^2 = 1 + 19602 + 19800.5 = 39403.5
#   score_6 = d56 + d63 + d62 = 1 + (99^2 + 100^2) + (100^2 + 100^2) = 1 + 19801 + 20000 = 39802
KRUM_SCORES = [2.5, 2.5, 2.5, 2.5, 1.5, 39403.5, 39802.0]


def test_pairwise_distances_by_hand():
    d = pairwise_sq_distances(KRUM_X)
    assert d[0, 3] == 2.0 and d[1, 4] == 0.5 and d[5, 6] == 1.0 and d[3, 5] == 19602.0
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0)


def test_krum_picks_the_center_of_the_honest_cluster():
    r = krum(KRUM_X, num_byzantine=2)
    np.testing.assert_allclose(r.scores, KRUM_SCORES)
    np.testing.assert_array_equal(r.selected, [4])
    np.testing.assert_array_equal(r.arrays["x"], [0.5, 0.5])  # reply 4 itself


def test_multi_krum_averages_the_honest_replies():
    # m = K - f = 5: the five honest replies (scores 1.5 and 2.5), never 5 or 6.
    r = multi_krum(KRUM_X, num_byzantine=2, num_selected=5, weighted=False)
    assert sorted(r.selected.tolist()) == [0, 1, 2, 3, 4]
    # uniform: ((0 + 1 + 0 + 1 + 0.5) / 5, (0 + 0 + 1 + 1 + 0.5) / 5) = (0.5, 0.5)
    np.testing.assert_allclose(r.arrays["x"], [0.5, 0.5])
    # weighted by n = 1..7: x = (0*1 + 1*2 + 0*3 + 1*4 + 0.5*5) / 15 = 8.5 / 15,
    #                       y = (0*1 + 0*2 + 1*3 + 1*4 + 0.5*5) / 15 = 9.5 / 15
    src = StackedReplies(KRUM_X, weights=[1, 2, 3, 4, 5, 6, 7])
    r = multi_krum(src, num_byzantine=2, num_selected=5, weighted=True)
    np.testing.assert_allclose(r.arrays["x"], [8.5 / 15, 9.5 / 15], rtol=1e-6)


def test_multi_krum_ties_go_to_the_lower_index():
    # m = 3: reply 4 (1.5), then the tie at 2.5 goes to replies 0 and 1.
    r = multi_krum(KRUM_X, num_byzantine=2, num_selected=3, weighted=False)
    np.testing.assert_array_equal(r.selected, [4, 0, 1])
    # ((0.5 + 0 + 1) / 3, (0.5 + 0 + 0) / 3) = (0.5, 1/6)
    np.testing.assert_allclose(r.arrays["x"], [0.5, 1 / 6], rtol=1e-6)


def test_krum_needs_more_than_2f_plus_2_replies():
    with pytest.raises(ValueError, match=r"more than 2f \+ 2 replies .* f=2 .* K=6"):
        krum(KRUM_X[:6], num_byzantine=2)
    with pytest.raises(ValueError, match="at least 3 replies"):
        krum(KRUM_X[:2], num_byzantine=0)
    with pytest.raises(ValueError, match="num_byzantine"):
        krum(KRUM_X, num_byzantine=-1)
    with pytest.raises(ValueError, match=r"num_selected must be in \[1, K - f\] = \[1, 5\]"):
        multi_krum(KRUM_X, num_byzantine=2, num_selected=6)
    with pytest.raises(ValueError, match="num_selected"):
        multi_krum(KRUM_X, num_byzantine=2, num_selected=0)


def test_krum_scores_sum_nearest_neighbours_excluding_self():
    d = np.array([[0, 1, 4, 9], [1, 0, 1, 4], [4, 1, 0, 1], [9, 4, 1, 0]], float)
    # f = 0: K - 2 = 2 neighbours. 0: 1 + 4;  1: 1 + 1;  2: 1 + 1;  3: 1 + 4
    np.testing.assert_array_equal(krum_scores(d, 0), [5, 2, 2, 5])


# ---- centered clipping -----------------------------------------------------------------------

X3 = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)


def test_centered_clipping_one_iteration_from_zero():
    # v0 = 0, tau = 2: distances 0, 1, 10 -> factors 1, 1, 2/10
    # v1 = 0 + (1/3) * (0 + 1 + 10 * 0.2) = 3 / 3 = 1; only site 2 (10 > 2) is clipped
    r = centered_clipping(X3, tau=2.0, clip_iters=1)
    np.testing.assert_allclose(r.arrays["x"], [1.0])
    np.testing.assert_array_equal(r.clipped, [False, False, True])
    np.testing.assert_array_equal(r.distances, [0.0, 1.0, 10.0])


def test_centered_clipping_two_iterations():
    # From v1 = 1: x - v = -1, 0, 9 -> factors 1, 1, 2/9
    # v2 = 1 + (1/3) * (-1 + 0 + 9 * 2/9) = 1 + 1/3 = 4/3; last iteration clipped site 2 (9 > 2)
    r = centered_clipping(X3, tau=2.0, clip_iters=2)
    np.testing.assert_allclose(r.arrays["x"], [4 / 3], rtol=1e-6)
    np.testing.assert_array_equal(r.clipped, [False, False, True])
    np.testing.assert_allclose(r.distances, [1.0, 0.0, 9.0])


def test_centered_clipping_from_the_previous_aggregate():
    # v0 = 10, tau = 2: x - v = -10, -9, 0 -> factors 0.2, 2/9, 1
    # v1 = 10 + (1/3) * (-10 * 0.2 - 9 * 2/9 + 0) = 10 - 4/3 = 26/3; sites 0 and 1 clipped
    r = centered_clipping(X3, tau=2.0, v0=np.array([10.0]))
    np.testing.assert_allclose(r.arrays["x"], [26 / 3], rtol=1e-6)
    np.testing.assert_array_equal(r.clipped, [True, True, False])


def test_centered_clipping_weighted_and_large_tau():
    # weighted n = 1, 1, 2 -> shares 1/4, 1/4, 1/2; from 0, tau = 2:
    # v1 = 0.25 * 0 + 0.25 * 1 + 0.5 * (10 * 0.2) = 1.25
    src = StackedReplies(X3, weights=[1, 1, 2])
    np.testing.assert_allclose(centered_clipping(src, 2.0, weighted=True).arrays["x"], [1.25])
    # tau larger than every distance: one step from 0 is the plain mean (0 + 1 + 10) / 3
    r = centered_clipping(X3, tau=100.0)
    np.testing.assert_allclose(r.arrays["x"], [11 / 3], rtol=1e-6)
    assert not r.clipped.any()


def test_centered_clipping_norm_is_over_all_tensors():
    # Reply 0 is a = 3, b = 4 (norm 5 over both tensors); reply 1 is zero. v0 = 0, tau = 1:
    # factors 1/5 and 1 -> v1 = (1/2) * (0.2 * (3, 4) + 0) = (0.3, 0.4)
    src = StackedReplies({"a": np.array([[3.0], [0.0]]), "b": np.array([[4.0], [0.0]])})
    r = centered_clipping(src, tau=1.0, v0={"a": np.zeros(1), "b": np.zeros(1)})
    np.testing.assert_allclose(r.arrays["a"], [0.3])
    np.testing.assert_allclose(r.arrays["b"], [0.4])
    np.testing.assert_array_equal(r.clipped, [True, False])
    np.testing.assert_allclose(r.distances, [5.0, 0.0])


def test_centered_clipping_argument_checks():
    for tau in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            centered_clipping(X3, tau)
    with pytest.raises(ValueError, match="clip_iters"):
        centered_clipping(X3, 1.0, clip_iters=0)
    with pytest.raises(ValueError, match="v0"):
        centered_clipping(X3, 1.0, v0={"y": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        centered_clipping(X3, 1.0, v0=np.zeros(2))


# ---- norm clipping and weights ---------------------------------------------------------------


def test_clip_update_norms_fixed():
    # C = 2.5: norms 1, 2 untouched; 3 -> 2.5/3; 10 -> 0.25
    c = clip_update_norms([1.0, 2.0, 3.0, 10.0], 2.5)
    np.testing.assert_allclose(c.scales, [1, 1, 2.5 / 3, 0.25])
    np.testing.assert_array_equal(c.clipped, [False, False, True, True])
    assert c.threshold == 2.5


def test_clip_update_norms_median_multiple():
    # median(1, 2, 3, 10) = 2.5, C = 2 * 2.5 = 5: only 10 -> 0.5
    c = clip_update_norms([1.0, 2.0, 3.0, 10.0], 2.0, mode="median")
    np.testing.assert_allclose(c.scales, [1, 1, 1, 0.5])
    np.testing.assert_array_equal(c.clipped, [False, False, False, True])
    assert c.threshold == 5.0


def test_clip_update_norms_checks():
    np.testing.assert_array_equal(clip_update_norms([0.0, 1.0], 0.5).scales, [1.0, 0.5])
    with pytest.raises(ValueError, match="mode"):
        clip_update_norms([1.0], 1.0, mode="mean")
    with pytest.raises(ValueError, match="clip_update_norm"):
        clip_update_norms([1.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        clip_update_norms([1.0, float("nan")], 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        clip_update_norms([], 1.0)


def test_update_norm_over_all_keys():
    assert update_norm({"a": np.array([3.0], np.float32), "b": np.array([[4.0]])}) == 5.0


def test_norm_clipping_in_front_of_any_rule():
    # Norms 1, 2, 3, 10 (1-D replies); fixed C = 2.5 -> replies become 1, 2, 2.5, 2.5
    x = np.array([[1.0], [2.0], [-3.0], [10.0]], np.float32)
    src = StackedReplies(x, weights=[1, 1, 1, 1])
    c = clip_update_norms(src.norms, 2.5)
    view = ReplyView(src, scales=c.scales)
    np.testing.assert_allclose(view.norms, [1, 2, 2.5, 2.5])
    # median of 1, 2, -2.5, 2.5 = (1 + 2) / 2 = 1.5
    np.testing.assert_allclose(coordinate_median(view)["x"], [1.5])
    # trimmed mean, b = 1: drop -2.5 and 2.5 -> 1.5
    np.testing.assert_allclose(trimmed_mean(view, 0.25).arrays["x"], [1.5])
    # the source is not modified
    np.testing.assert_array_equal(x[:, 0], [1, 2, -3, 10])


def test_effective_weights():
    n = [10.0, 20.0, 30.0, 1e30]
    np.testing.assert_array_equal(effective_weights(n, "examples"), n)
    np.testing.assert_array_equal(effective_weights(n, "uniform"), [1, 1, 1, 1])
    # median(10, 20, 30, 1e30) = 25; cap 2 -> min(n, 50)
    np.testing.assert_array_equal(effective_weights(n, "capped", cap=2.0), [10, 20, 30, 50])
    with pytest.raises(ValueError, match="cap > 0"):
        effective_weights(n, "capped")
    with pytest.raises(ValueError, match="weighting must be one of"):
        effective_weights(n, "sqrt")
    for bad in ([0.0, 1.0], [float("inf")], [-1.0]):
        with pytest.raises(ValueError, match="finite and > 0"):
            effective_weights(bad, "uniform")


def test_reweighted_view_feeds_multi_krum():
    # The Byzantine replies claim 1e30 examples; capping (cap 1, median 4) keeps them at 4, and
    # Multi-Krum drops them anyway. Selected 0..4 with weights 1, 2, 3, 4, 4 (capped from 5):
    # x = (0 + 2 + 0 + 4 + 0.5 * 4) / 14 = 8/14;  y = (0 + 0 + 3 + 4 + 0.5 * 4) / 14 = 9/14
    n = [1, 2, 3, 4, 5, 1e30, 1e30]
    src = StackedReplies(KRUM_X, weights=n)
    view = ReplyView(src, weights=effective_weights(n, "capped", cap=1.0))
    np.testing.assert_array_equal(view.weights, [1, 2, 3, 4, 4, 4, 4])
    r = multi_krum(view, num_byzantine=2, num_selected=5)
    np.testing.assert_allclose(r.arrays["x"], [8 / 14, 9 / 14], rtol=1e-6)


def test_no_replies():
    for rule in (coordinate_median, lambda x: trimmed_mean(x, 0.1)):
        with pytest.raises(ValueError, match="no replies"):
            rule(np.zeros((0, 3), np.float32))


# ---- chunked == unchunked, store == memory ---------------------------------------------------


@st.composite
def replies(draw, min_k: int = 1, max_k: int = 9):
    k = draw(st.integers(min_k, max_k))
    n_keys = draw(st.integers(1, 3))
    out = {}
    for i in range(n_keys):
        shape = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))
        out[f"t{i}"] = draw(
            np_arrays(
                np.float32,
                (k, *shape),
                elements=st.floats(-100, 100, width=32, allow_subnormal=False),
            )
        )
    weights = draw(st.lists(st.floats(0.5, 50), min_size=k, max_size=k))
    return out, weights


def _flat(x: dict[str, np.ndarray]) -> np.ndarray:
    k = next(iter(x.values())).shape[0]
    return np.concatenate([v.reshape(k, -1) for v in x.values()], axis=1).astype(np.float64)


def _unflat(flat: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for key, v in like.items():
        size = int(np.prod(v.shape[1:], dtype=np.int64))
        out[key] = flat[at : at + size].reshape(v.shape[1:])
        at += size
    return out


def _assert_arrays_close(got, want, rtol=1e-5, atol=1e-4):
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)


@settings(max_examples=60, deadline=None)
@given(replies(), st.integers(1, 40), st.sampled_from([0.0, 0.1, 0.25, 0.4]))
def test_coordinate_rules_match_a_direct_computation(data, chunk, beta):
    x, w = data
    src = StackedReplies(x, weights=w)
    k = len(src)
    flat = _flat(x)
    # median: any chunk size gives exactly the same bits as the unchunked rule
    med = coordinate_median(src, chunk_elems=chunk)
    whole = coordinate_median(src, chunk_elems=10**9)
    for key in x:
        np.testing.assert_array_equal(med[key], whole[key])
    _assert_arrays_close(med, _unflat(np.median(flat, axis=0), x))
    # trimmed mean: sort, drop b per side, average the rest
    b = trimmed_per_side(k, beta)
    tm = trimmed_mean(src, beta, chunk_elems=chunk)
    want = np.sort(flat, axis=0)[b : k - b].mean(axis=0)
    _assert_arrays_close(tm.arrays, _unflat(want, x))
    assert tm.trimmed_low.sum() == tm.trimmed_high.sum() == b * flat.shape[1]
    whole_tm = trimmed_mean(src, beta, chunk_elems=10**9)
    np.testing.assert_array_equal(tm.trimmed_low, whole_tm.trimmed_low)
    np.testing.assert_array_equal(tm.trimmed_high, whole_tm.trimmed_high)


@settings(max_examples=60, deadline=None)
@given(replies(min_k=3), st.integers(1, 40), st.data())
def test_krum_matches_a_direct_computation(data, chunk, draw):
    x, w = data
    src = StackedReplies(x, weights=w)
    k = len(src)
    f = draw.draw(st.integers(0, (k - 3) // 2))
    m = draw.draw(st.integers(1, k - f))
    flat = _flat(x)
    direct = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    r = multi_krum(src, f, m, weighted=True, chunk_elems=chunk)
    scale = max(1.0, float(direct.max()))
    np.testing.assert_allclose(r.distances, direct, rtol=1e-9, atol=1e-9 * scale)
    want_scores = np.sort(direct + np.diag(np.full(k, np.inf)), axis=1)[:, : k - f - 2].sum(1)
    np.testing.assert_allclose(r.scores, want_scores, rtol=1e-9, atol=1e-9 * scale)
    # the selected replies have the m lowest scores (a near-tie may pick either)
    assert r.scores[r.selected].max() <= np.sort(r.scores)[m - 1] + 1e-9 * scale
    a = np.asarray(w)[r.selected]
    want = (a[:, None] * flat[r.selected]).sum(0) / a.sum()
    _assert_arrays_close(r.arrays, _unflat(want, x))


def _centered_clipping_direct(flat, tau, iters, v, share):
    for _ in range(iters):
        diff = flat - v
        dist = np.sqrt((diff**2).sum(axis=1))
        with np.errstate(divide="ignore"):
            c = np.minimum(1.0, tau / dist)
        v = v + (share * c) @ diff
    return v, dist


@settings(max_examples=60, deadline=None)
@given(
    replies(),
    st.integers(1, 40),
    st.floats(0.5, 500),
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
)
def test_centered_clipping_matches_a_direct_computation(data, chunk, tau, iters, weighted, warm):
    x, w = data
    src = StackedReplies(x, weights=w)
    k = len(src)
    flat = _flat(x)
    v0 = {key: np.full(v.shape[1:], 3.0, np.float32) for key, v in x.items()} if warm else None
    r = centered_clipping(src, tau, clip_iters=iters, v0=v0, weighted=weighted, chunk_elems=chunk)
    share = np.asarray(w) / np.sum(w) if weighted else np.full(k, 1.0 / k)
    start = np.full(flat.shape[1], 3.0) if warm else np.zeros(flat.shape[1])
    v, dist = _centered_clipping_direct(flat, tau, iters, start, share)
    _assert_arrays_close(r.arrays, _unflat(v, x), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r.distances, dist, rtol=1e-4, atol=1e-3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies(min_k=3), st.integers(1, 40))
def test_store_gives_the_same_results_as_memory(data, chunk):
    x, w = data
    mem = StackedReplies(x, weights=w)
    with tempfile.TemporaryDirectory() as d, ReplyStore(d) as store:
        for i in range(len(mem)):
            store.add(f"s{i}", {key: v[i, ...] for key, v in x.items()}, w[i])
        np.testing.assert_allclose(store.norms, mem.norms, rtol=1e-12)
        np.testing.assert_array_equal(store.weights, mem.weights)
        for key, v in coordinate_median(store, chunk_elems=chunk).items():
            np.testing.assert_array_equal(v, coordinate_median(mem)[key])
        a, b = trimmed_mean(store, 0.2, chunk_elems=chunk), trimmed_mean(mem, 0.2)
        np.testing.assert_array_equal(a.trimmed, b.trimmed)
        _assert_arrays_close(a.arrays, b.arrays)
        ka, kb = krum(store, 0, chunk_elems=chunk), krum(mem, 0)
        np.testing.assert_allclose(ka.scores, kb.scores, rtol=1e-9, atol=1e-6)
        ca = centered_clipping(store, 1.0, clip_iters=2, chunk_elems=chunk)
        cb = centered_clipping(mem, 1.0, clip_iters=2)
        _assert_arrays_close(ca.arrays, cb.arrays)
        # norm clipping over the store, in front of a rule
        clip = clip_update_norms(store.norms, 1.0, mode="median")
        va = coordinate_median(ReplyView(store, scales=clip.scales), chunk_elems=chunk)
        vb = coordinate_median(ReplyView(mem, scales=clip.scales))
        _assert_arrays_close(va, vb)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda k: np_arrays(np.float32, (k, 17), elements=st.integers(0, 3).map(float))
    ),
    st.sampled_from([0.1, 0.25, 0.34, 0.49]),
    st.integers(1, 20),
)
def test_trim_counts_follow_a_stable_ranking_with_many_ties(x, beta, chunk):
    """Ranked by value, then reply index: the b first of every column are trimmed low, the b
    last trimmed high (what a stable argsort of each column gives)."""
    k = x.shape[0]
    b = trimmed_per_side(k, beta)
    r = trimmed_mean(x, beta, chunk_elems=chunk)
    order = np.argsort(x, axis=0, kind="stable")
    np.testing.assert_array_equal(r.trimmed_low, np.bincount(order[:b].ravel(), minlength=k))
    np.testing.assert_array_equal(r.trimmed_high, np.bincount(order[k - b :].ravel(), minlength=k))
    want = np.sort(x.astype(np.float64), axis=0)[b : k - b].mean(axis=0)
    np.testing.assert_allclose(r.arrays["x"], want, rtol=1e-6)


def test_sorted_store_results_do_not_depend_on_arrival_order(tmp_path):
    """After ReplyStore.sort_by_site, every rule gives the same bits and the same per-site
    records whatever order the replies arrived in (ties included)."""
    rng = np.random.default_rng(3)
    names = [f"site-{i}" for i in range(7)]
    updates = {
        n: {"w": rng.standard_normal((4, 5)).astype(np.float32), "t": np.zeros(3, np.float32)}
        for n in names
    }  # "t" ties at every coordinate
    results = []
    for order in (names, names[::-1], [names[i] for i in (3, 0, 6, 1, 5, 2, 4)]):
        with ReplyStore(tmp_path) as store:
            for n in order:
                store.add(n, updates[n], 1.0 + names.index(n))
            store.sort_by_site()
            tm = trimmed_mean(store, 0.3, chunk_elems=3)
            mk = multi_krum(store, 1, 4, chunk_elems=3)
            cc = centered_clipping(store, 0.5, clip_iters=3, chunk_elems=3)
            results.append(
                (
                    store.sites,
                    {k: v.tobytes() for k, v in tm.arrays.items()},
                    tm.trimmed.tolist(),
                    mk.selected.tolist(),
                    {k: v.tobytes() for k, v in mk.arrays.items()},
                    {k: v.tobytes() for k, v in cc.arrays.items()},
                    cc.clipped.tolist(),
                )
            )
    assert results[0] == results[1] == results[2]


def test_weighted_mean_with_capped_weights_and_median_clipping():
    # Replies 1, 2, 3, 40 (1-D) claiming n = 10, 20, 30, 1e30 examples.
    x = np.array([[1.0], [2.0], [3.0], [40.0]], np.float32)
    src = StackedReplies(x, weights=[10, 20, 30, 1e30])
    # uniform: (1 + 2 + 3 + 40) / 4 = 11.5
    np.testing.assert_allclose(weighted_mean(src, weighted=False)["x"], [11.5])
    # capped at 2 x median(n) = 2 x 25 = 50, sum 110: (10 + 40 + 90 + 50 * 40) / 110 = 2140 / 110
    capped = ReplyView(src, weights=effective_weights(src.weights, "capped", cap=2.0))
    np.testing.assert_allclose(weighted_mean(capped)["x"], [2140 / 110], rtol=1e-6)
    # and norms clipped at 2 x median(1, 2, 3, 40) = 5: 40 -> 5:
    # (10 + 40 + 90 + 50 * 5) / 110 = 390 / 110
    clip = clip_update_norms(src.norms, 2.0, mode="median")
    view = ReplyView(src, scales=clip.scales, weights=capped.weights)
    np.testing.assert_allclose(weighted_mean(view, chunk_elems=1)["x"], [390 / 110], rtol=1e-6)


# ---- one clip ---------------------------------------------------------------------------------


def test_clip_scale_by_hand():
    from orchestrator.contract.privacy import clip_scale

    assert clip_scale(5.0, 1.0) == 0.2  # norm 5 clipped to 1
    assert clip_scale(0.5, 1.0) == 1.0  # already within the bound
    assert clip_scale(1.0, 1.0) == 1.0  # on the bound: unchanged
    assert clip_scale(0.0, 1.0) == 1.0  # a zero update keeps scale 1
    for bad_bound in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="clip bound"):
            clip_scale(1.0, bad_bound)
    with pytest.raises(ValueError, match="norm"):
        clip_scale(float("nan"), 1.0)


def test_every_clip_is_the_same_clip():
    """The server's norm clip (streamed and stored), central/local DP's clip_to_norm and
    centered clipping's factor all scale by clip_scale: (3, 4) has norm 5 -> (0.6, 0.8)."""
    from orchestrator.contract.privacy import clip_to_norm
    from strategies.norm_clip import NormClipStage
    from strategies.pipeline import Reply

    update = {"x": np.array([3.0, 4.0], np.float32)}
    clipped, norm = clip_to_norm(update, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["x"], [0.6, 0.8], rtol=1e-5)  # norm <= 1 exactly
    staged = NormClipStage(1.0)(Reply(1, "site-1", update, 1.0), 1)
    np.testing.assert_array_equal(staged.update["x"], clipped["x"])
    assert staged.note == "clipped: norm 5 > 1"
    scales = clip_update_norms([5.0, 0.5], 1.0).scales
    np.testing.assert_array_equal(scales, [0.2, 1.0])
    # centered clipping from v0 = 0 with tau = 1, one iteration: x scaled by min(1, 1/5), / K=1
    cc = centered_clipping(np.array([[3.0, 4.0]], np.float32), 1.0, clip_iters=1)
    np.testing.assert_allclose(cc.arrays["x"], [0.6, 0.8], rtol=1e-6)
