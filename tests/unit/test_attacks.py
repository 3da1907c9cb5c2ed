"""Simulated attacks (clients/attacks.py) against their papers' formulas, with values worked by
hand in the comments; dtypes kept, inputs never modified, attacker selection reproducible."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clients.attacks import (
    ATTACK_KINDS,
    alie,
    alie_z_max,
    attack_update,
    flip_labels,
    gaussian,
    ipm,
    scale_attack,
    sign_flip,
)
from orchestrator.contract.attackers import select_attackers


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# Three benign updates with two tensors, used by ALIE and IPM:
#   "w": coord 0 = [1, 2, 3] -> mu 2, population sigma sqrt(2/3) = 0.8164966
#        coord 1 = [0, 0, 0] -> mu 0, sigma 0
#        coord 2 = [3, 3, 0] -> mu 2, sigma sqrt((1 + 1 + 4)/3) = sqrt(2) = 1.4142136
#   "b": [0.5, 0.5, 2]      -> mu 1, sigma sqrt((0.25 + 0.25 + 1)/3) = sqrt(0.5) = 0.7071068
BENIGN = [
    {"w": f32(1, 0, 3), "b": f32(0.5)},
    {"w": f32(2, 0, 3), "b": f32(0.5)},
    {"w": f32(3, 0, 0), "b": f32(2.0)},
]


# --------------------------------------------------------------------------------------------
# ALIE


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [
        # s = floor(n/2 + 1) - f; z = Phi^-1((n - s)/n)
        (5, 1, 0.2533471031),  # s = 3 - 1 = 2, Phi^-1(3/5 = 0.6)
        (10, 2, 0.2533471031),  # s = 6 - 2 = 4, Phi^-1(6/10 = 0.6)
        (20, 4, 0.3853204664),  # s = 11 - 4 = 7, Phi^-1(13/20 = 0.65)
        (10, 5, 1.2815515655),  # s = 6 - 5 = 1, Phi^-1(0.9)
        (2, 1, 0.0),  # s = 2 - 1 = 1, Phi^-1(0.5) = 0: the reply is the benign mean
        (4, 0, -0.6744897502),  # s = 3, Phi^-1(0.25) < 0: paper's formula as is
    ],
)
def test_alie_z_max_paper_formula(n: int, f: int, z: float):
    assert alie_z_max(n, f) == pytest.approx(z, abs=1e-9)


def test_alie_z_max_refuses_where_phi_inverse_is_undefined():
    # n=10, f=6: s = 6 - 6 = 0 -> (n - s)/n = 1 -> Phi^-1 = +inf (attackers are a majority)
    with pytest.raises(ValueError, match=r"attack\.fraction.*majority"):
        alie_z_max(10, 6)
    # n=1, f=0: s = 1 -> (n - s)/n = 0 -> Phi^-1 = -inf
    with pytest.raises(ValueError, match="at least 2 sites"):
        alie_z_max(1, 0)
    with pytest.raises(ValueError, match="num_attackers"):
        alie_z_max(4, 5)
    with pytest.raises(ValueError, match=r"federation\.num_sites"):
        alie_z_max(0, 0)


def test_alie_matches_mu_minus_z_sigma_by_hand():
    # n=10, f=2: z = 0.2533471 (above). malicious = mu - z * sigma:
    #   w0: 2 - 0.2533471 * 0.8164966 = 2 - 0.2068570 = 1.7931430
    #   w1: 0 - z * 0 = 0
    #   w2: 2 - 0.2533471 * 1.4142136 = 2 - 0.3582869 = 1.6417131
    #   b:  1 - 0.2533471 * 0.7071068 = 1 - 0.1791435 = 0.8208565
    out = alie(BENIGN, num_sites=10, num_attackers=2)
    np.testing.assert_allclose(out["w"], [1.7931430, 0.0, 1.6417131], atol=1e-6)
    np.testing.assert_allclose(out["b"], [0.8208565], atol=1e-6)
    assert out["w"].dtype == np.float32 and out["b"].dtype == np.float32


def test_alie_with_only_its_own_update_is_that_update():
    # One benign update: sigma = 0, so mu - z * 0 = the update itself.
    own = {"w": f32(1.5, -2.0)}
    np.testing.assert_array_equal(alie([own], 10, 2)["w"], own["w"])


def test_alie_refuses_mismatched_benign_updates():
    with pytest.raises(ValueError, match="no updates"):
        alie([], 10, 2)
    with pytest.raises(ValueError, match="names"):
        alie([{"w": f32(1)}, {"v": f32(1)}], 10, 2)
    with pytest.raises(ValueError, match="shape"):
        alie([{"w": f32(1)}, {"w": f32(1, 2)}], 10, 2)


# --------------------------------------------------------------------------------------------
# IPM


def test_ipm_is_minus_epsilon_times_the_benign_mean():
    # mean(w) = [(1+2+3)/3, 0, (3+3+0)/3] = [2, 0, 2]; mean(b) = (0.5+0.5+2)/3 = 1
    # epsilon 0.5 -> w = [-1, 0, -1], b = [-0.5]
    out = ipm(BENIGN, epsilon=0.5)
    np.testing.assert_allclose(out["w"], [-1.0, 0.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(out["b"], [-0.5], atol=1e-7)
    assert out["w"].dtype == np.float32
    # The aggregate's inner product with the true mean turns negative for epsilon large enough:
    # 3 benign + 1 IPM with epsilon 100: mean = (3 mu - 100 mu) / 4 = -24.25 mu.
    agg = (3 * np.array([2, 0, 2]) + ipm(BENIGN, 100.0)["w"]) / 4
    np.testing.assert_allclose(agg, [-48.5, 0.0, -48.5], rtol=1e-6)


def test_ipm_refuses_a_non_positive_epsilon():
    with pytest.raises(ValueError, match=r"attack\.scale"):
        ipm(BENIGN, 0.0)
    with pytest.raises(ValueError, match=r"attack\.scale"):
        ipm(BENIGN, float("nan"))


# --------------------------------------------------------------------------------------------
# Simple Byzantine replies


def test_sign_flip_and_scale():
    update = {"w": f32(1, -2, 0.25)}
    np.testing.assert_array_equal(sign_flip(update)["w"], f32(-1, 2, -0.25))  # -1 * u
    np.testing.assert_array_equal(sign_flip(update, 2.0)["w"], f32(-2, 4, -0.5))  # -2 * u
    np.testing.assert_array_equal(scale_attack(update, 100)["w"], f32(100, -200, 25))  # 100 * u
    with pytest.raises(ValueError, match=r"attack\.scale"):
        scale_attack(update, float("inf"))


def test_gaussian_replaces_values_with_noise_of_the_given_std():
    update = {"w": np.ones((200, 500), dtype=np.float32), "b": np.zeros(3, dtype=np.float16)}
    out = gaussian(update, 3.0, np.random.default_rng(0))
    assert out["w"].shape == (200, 500) and out["w"].dtype == np.float32
    assert out["b"].shape == (3,) and out["b"].dtype == np.float16
    # 100k draws of N(0, 9): sample mean within ~4 * 3/sqrt(1e5) = 0.04, std within 2%
    assert abs(float(out["w"].mean())) < 0.04
    assert float(out["w"].std()) == pytest.approx(3.0, rel=0.02)
    again = gaussian(update, 3.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out["w"], again["w"])  # same rng seed, same noise
    with pytest.raises(ValueError, match=r"attack\.scale"):
        gaussian(update, -1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Every attack: dtype kept, inputs untouched


def _all_replies(update, benign):
    return {
        kind: attack_update(
            kind,
            update,
            scale=np.float64(0.5),  # a numpy float64 scalar must not promote float32 arrays
            rng=np.random.default_rng(1),
            benign=benign,
            num_sites=10,
            num_attackers=2,
        )
        for kind in ATTACK_KINDS
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_every_kind_keeps_dtype_shape_and_leaves_inputs_unmodified(dtype):
    update = {"w": np.arange(6, dtype=dtype).reshape(2, 3), "b": np.array([0.5], dtype=dtype)}
    benign = [{k: (v + i).astype(dtype) for k, v in update.items()} for i in range(3)]
    update_before, benign_before = copy.deepcopy(update), copy.deepcopy(benign)
    for kind, out in _all_replies(update, benign).items():
        assert set(out) == set(update), kind
        for k in update:
            assert out[k].dtype == dtype, (kind, k)
            assert out[k].shape == update[k].shape, (kind, k)
    for k in update:
        np.testing.assert_array_equal(update[k], update_before[k])
        for b, b0 in zip(benign, benign_before, strict=True):
            np.testing.assert_array_equal(b[k], b0[k])


# --------------------------------------------------------------------------------------------
# Dispatch


def test_attack_update_dispatches_to_the_paper_functions():
    u = {"w": f32(1, -2, 3)}
    np.testing.assert_array_equal(attack_update("sign_flip", u, scale=1.0)["w"], f32(-1, 2, -3))
    np.testing.assert_array_equal(attack_update("scale", u, scale=10.0)["w"], f32(10, -20, 30))
    for kind in ("none", "label_flip"):  # label_flip poisons the data, not the update
        assert attack_update(kind, u)["w"] is u["w"]
    np.testing.assert_array_equal(
        attack_update("gaussian", u, scale=1.0, rng=np.random.default_rng(5))["w"],
        gaussian(u, 1.0, np.random.default_rng(5))["w"],
    )
    # benign given: the colluders' view
    np.testing.assert_array_equal(
        attack_update("alie", u, benign=BENIGN, num_sites=10, num_attackers=2)["w"],
        alie(BENIGN, 10, 2)["w"],
    )
    np.testing.assert_array_equal(
        attack_update("ipm", u, scale=0.5, benign=BENIGN)["w"], f32(-1, 0, -1)
    )
    # benign omitted: [u] -> ALIE returns u (sigma 0), IPM returns -epsilon * u
    np.testing.assert_array_equal(
        attack_update("alie", u, num_sites=10, num_attackers=2)["w"], u["w"]
    )
    np.testing.assert_array_equal(attack_update("ipm", u, scale=2.0)["w"], f32(-2, 4, -6))


def test_attack_update_errors_name_what_is_missing():
    u = {"w": f32(1)}
    with pytest.raises(ValueError, match=r"attack\.kind.*sign_flip \| scale \| gaussian"):
        attack_update("flip", u)
    with pytest.raises(ValueError, match="rng"):
        attack_update("gaussian", u, scale=1.0)
    with pytest.raises(ValueError, match="num_sites and num_attackers"):
        attack_update("alie", u)


# --------------------------------------------------------------------------------------------
# Label flipping


def test_flip_labels_maps_i_to_c_minus_1_minus_i():
    labels = np.array([0, 1, 2, 3, 4, -100], dtype=np.int64)
    out = flip_labels(labels, 5)
    np.testing.assert_array_equal(out, [4, 3, 2, 1, 0, -100])  # -100 (ignored) left as is
    assert out.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, -100])  # input untouched
    np.testing.assert_array_equal(flip_labels(np.array([0, 1], dtype=np.uint8), 2), [1, 0])


@given(
    st.integers(1, 50).flatmap(
        lambda c: st.tuples(
            st.just(c),
            arrays(np.int32, st.integers(0, 20), elements=st.integers(-100, c - 1)),
        )
    )
)
def test_flip_labels_is_an_involution(case):
    num_classes, labels = case
    once = flip_labels(labels, num_classes)
    np.testing.assert_array_equal(flip_labels(once, num_classes), labels)
    assert once.dtype == labels.dtype
    assert ((once >= 0) == (labels >= 0)).all()


def test_flip_labels_refuses_bad_input():
    with pytest.raises(ValueError, match="label 5"):
        flip_labels(np.array([5]), 5)
    with pytest.raises(ValueError, match="integer array"):
        flip_labels(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="num_classes"):
        flip_labels(np.array([0]), 0)
    with pytest.raises(ValueError, match="wider integer dtype"):
        flip_labels(np.array([0], dtype=np.uint8), 300)


# --------------------------------------------------------------------------------------------
# Who attacks


def test_select_attackers_is_reproducible_sorted_and_sized():
    a = select_attackers(10, 0.2, None, seed=7)
    assert a == select_attackers(10, 0.2, None, seed=7)
    assert len(a) == 2 and a == sorted(a) and len(set(a)) == 2
    assert all(0 <= s < 10 for s in a)
    assert len(select_attackers(10, 0.25, None, seed=0)) == 2  # round(2.5) = 2 (to even)
    assert len(select_attackers(10, 0.35, None, seed=0)) == 4  # round(3.5) = 4
    assert select_attackers(10, 0.0, None, seed=0) == []


def test_select_attackers_differs_across_seeds():
    # 30 of 100 sites: C(100, 30) ~ 3e25 possible sets, two seeds colliding would be a bug.
    picks = {tuple(select_attackers(100, 0.3, None, seed=s)) for s in range(5)}
    assert len(picks) == 5


def test_explicit_sites_win_over_fraction():
    assert select_attackers(10, 0.5, [7, 2], seed=0) == [2, 7]
    assert select_attackers(10, 0.0, [], seed=0) == []


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"fraction": 1.0}, r"attack\.fraction"),
        ({"fraction": -0.1}, r"attack\.fraction"),
        ({"fraction": float("nan")}, r"attack\.fraction"),
        ({"sites": [10]}, r"attack\.sites.*\[0, federation\.num_sites=10\)"),
        ({"sites": [-1]}, r"attack\.sites"),
        ({"sites": [1, 1]}, r"attack\.sites.*distinct"),
        ({"sites": [1.5]}, r"attack\.sites.*integer"),
        ({"num_sites": 0}, r"federation\.num_sites"),
    ],
)
def test_select_attackers_validation_names_the_config_key(kwargs, key):
    args = {"num_sites": 10, "fraction": 0.2, "sites": None, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=key):
        select_attackers(**args)
