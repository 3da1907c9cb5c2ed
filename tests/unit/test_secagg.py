"""SecAgg+ protocol (orchestrator/secagg): exact sums, privacy of one masked vector, dropouts,
tampering, skipped rounds, quantization error, and fuzzed decoders."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.secagg import RoundAborted, SecAggError, ServerRound, SiteRound, new_params
from orchestrator.secagg import primitives as P
from orchestrator.secagg.graph import neighbours
from orchestrator.secagg.local import run_round
from orchestrator.secagg.protocol import RoundParams
from orchestrator.secagg.quantize import dequantize_sum, levels, quantize, step

D = 2_000


def _qs(n: int, d: int = D, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, levels(n) + 1, d, dtype=np.uint32) for _ in range(n)]


def _plain(qs: list[np.ndarray], sids, params: RoundParams) -> np.ndarray:
    total = sum(qs[s - 1].astype(np.uint64) for s in sids)
    return dequantize_sum(total, len(sids), params.clip_range, params.num_sites)


def test_unmasked_sum_equals_plain_quantized_sum_exactly() -> None:
    params = new_params(5, None, None, 1.0, D)
    qs = _qs(5)
    total, count, _ = run_round(qs, params)
    assert count == 5
    np.testing.assert_array_equal(total, _plain(qs, range(1, 6), params))


def test_extreme_values_do_not_overflow() -> None:
    params = new_params(7, None, None, 1.0, D)
    qs = [np.full(D, levels(7), dtype=np.uint32) for _ in range(7)]
    total, _, _ = run_round(qs, params)
    np.testing.assert_allclose(total, 7.0, atol=1e-6)


def test_neighbour_graph_secagg_plus_sum_is_exact() -> None:
    params = new_params(12, None, 4, 1.0, D)
    g = params.graph()
    assert all(len(v) == 4 for v in g.values())
    assert all(i in g[j] for i in g for j in g[i])  # symmetric
    qs = _qs(12)
    total, count, _ = run_round(qs, params, drop_before_mask={5})
    assert count == 11
    np.testing.assert_array_equal(total, _plain(qs, [s for s in range(1, 13) if s != 5], params))


def test_one_masked_vector_carries_no_usable_information() -> None:
    d = 50_000
    params = new_params(3, None, None, 1.0, d)
    x = np.linspace(-1, 1, d)
    q, _ = quantize(x, 1.0, 3, np.random.default_rng(0))
    seen: list[np.ndarray] = []

    def spy(step: str, sid: int, p):  # the server's view of site 1's upload
        if step == "masked" and sid == 1:
            seen.append(p["y"].astype(np.float64))
        return p

    run_round([q, q.copy(), q.copy()], params, tamper=spy)
    corr = np.corrcoef(seen[0], q.astype(np.float64))[0, 1]
    assert abs(corr) < 0.03  # ~N(0, 1/sqrt(d)) = 0.0045 for independent vectors
    # and it looks uniform over uint32, whatever the input
    assert abs(seen[0].mean() / 2**32 - 0.5) < 0.01


def test_recovers_one_of_five_dropped_after_sharing() -> None:
    params = new_params(5, 3, None, 1.0, D)
    qs = _qs(5)
    total, count, server = run_round(qs, params, drop_before_mask={2})
    assert count == 4 and server.dropped == [2]
    np.testing.assert_array_equal(total, _plain(qs, [1, 3, 4, 5], params))


def test_survivor_missing_in_unmask_is_fine_above_threshold() -> None:
    params = new_params(5, 3, None, 1.0, D)
    qs = _qs(5)
    total, count, _ = run_round(qs, params, drop_before_mask={2}, drop_before_unmask={4})
    assert count == 4  # 4's masked input counts; its mask is rebuilt from the others' shares
    np.testing.assert_array_equal(total, _plain(qs, [1, 3, 4, 5], params))


def test_too_many_dropouts_abort_the_round() -> None:
    params = new_params(5, 4, None, 1.0, D)
    with pytest.raises(RoundAborted, match="threshold"):
        run_round(_qs(5), params, drop_before_mask={1, 2})
    with pytest.raises(RoundAborted, match="threshold"):
        run_round(_qs(5), params, drop_before_unmask={1, 2})


def test_tampered_share_is_reported_and_the_others_recover() -> None:
    params = new_params(5, 3, None, 1.0, D)
    qs = _qs(5)

    def flip(step: str, sid: int, p):
        if step == "mask-request" and sid == 3:  # the share from site 1 to site 3
            i = p["from"].index(1)
            ct = bytearray(p["ct"][i])
            ct[-1] ^= 1
            p = {**p, "ct": [*p["ct"][:i], bytes(ct), *p["ct"][i + 1 :]]}
        return p

    total, _, server = run_round(qs, params, tamper=flip)
    assert server.failed == {3: [1]}
    np.testing.assert_array_equal(total, _plain(qs, range(1, 6), params))


def test_tampered_masked_vector_is_rejected() -> None:
    params = new_params(5, 3, None, 1.0, D)
    qs = _qs(5)

    def flip(step: str, sid: int, p):
        if step == "masked" and sid == 4:
            y = p["y"].copy()
            y[7] += 1
            p = {**p, "y": y}
        return p

    total, count, server = run_round(qs, params, tamper=flip)
    assert count == 4 and server.dropped == [4]  # rejected = treated as dropped, recovered
    np.testing.assert_array_equal(total, _plain(qs, [1, 2, 3, 5], params))
    server2 = ServerRound(params)
    with pytest.raises(SecAggError, match="authentication"):
        _site, keys = SiteRound.advertise(server2.setup(1))
        server2.receive_keys(1, keys)
        server2.shared.add(1)
        server2.receive_masked(1, qs[0], {"tag": bytes(32)})


def test_server_cannot_ask_for_both_secrets() -> None:
    params = new_params(3, 2, None, 1.0, 10)
    server = ServerRound(params)
    sites = {}
    for sid in (1, 2, 3):
        sites[sid], r = SiteRound.advertise(server.setup(sid))
        server.receive_keys(sid, r)
    for sid, req in server.share_requests().items():
        server.receive_shares(sid, sites[sid].share_keys(req))
    for sid, req in server.mask_requests().items():
        sites[sid].masked_input(req, np.zeros(10, np.uint32))
    with pytest.raises(SecAggError, match="both secrets"):
        sites[1].unmask({"survivors": [1, 2], "dropped": [2]})


def test_threshold_must_be_a_majority_and_at_most_the_group() -> None:
    with pytest.raises(SecAggError, match="threshold 6"):
        new_params(5, 6, None, 1.0, 10)
    with pytest.raises(SecAggError, match="threshold 2 must be in"):
        new_params(5, 2, None, 1.0, 10)
    assert new_params(5, None, None, 1.0, 10).threshold == 4  # ceil(2 * 5 / 3)


def test_shamir_roundtrip_any_t_of_n() -> None:
    secret = bytes(range(32))
    shares = P.share_secret(secret, [1, 2, 3, 4, 5], 3)
    assert P.reconstruct({k: shares[k] for k in (5, 2, 4)}, 3) == secret
    # a share moved to the wrong point rebuilds garbage (out of range; else the commitment fails)
    with pytest.raises(SecAggError, match="inconsistent shares"):
        P.reconstruct({1: shares[1], 2: shares[2], 3: shares[4]}, 3)
    with pytest.raises(SecAggError, match="threshold"):
        P.reconstruct({1: shares[1], 2: shares[2]}, 3)


def test_quantization_error_is_below_one_step_and_unbiased() -> None:
    rng = np.random.default_rng(1)
    n, r = 10, 0.5
    x = rng.uniform(-0.6, 0.6, 100_000)
    q, clipped = quantize(x, r, n, rng)
    assert clipped == int(np.count_nonzero(np.abs(x) > r))
    back = dequantize_sum(q.astype(np.uint64), 1, r, n)
    err = back - np.clip(x, -r, r)
    assert np.max(np.abs(err)) <= step(r, n)
    assert abs(err.mean()) < 4 * step(r, n) / np.sqrt(x.size)  # stochastic rounding: unbiased


def test_graph_is_deterministic_from_the_nonce() -> None:
    a = neighbours(20, 6, b"x" * 16)
    assert a == neighbours(20, 6, b"x" * 16)
    assert a != neighbours(20, 6, b"y" * 16)


def test_site_state_survives_a_roundtrip() -> None:
    params = new_params(3, 2, None, 1.0, 10)
    server = ServerRound(params)
    sites = {}
    for sid in (1, 2, 3):
        sites[sid], r = SiteRound.advertise(server.setup(sid))
        server.receive_keys(sid, r)
    # every step runs on a site restored from its state (as between two Flower messages)
    for sid, req in server.share_requests().items():
        sites[sid] = SiteRound.from_state(sites[sid].to_state())
        server.receive_shares(sid, sites[sid].share_keys(req))
    qs = _qs(3, 10)
    for sid, req in server.mask_requests().items():
        sites[sid] = SiteRound.from_state(sites[sid].to_state())
        y, reply = sites[sid].masked_input(req, qs[sid - 1])
        server.receive_masked(sid, y, reply)
    for sid, req in server.unmask_requests().items():
        sites[sid] = SiteRound.from_state(sites[sid].to_state())
        server.receive_unmask(sid, sites[sid].unmask(req))
    total, _ = server.result()
    np.testing.assert_array_equal(total, _plain(qs, [1, 2, 3], params))
    assert SiteRound.from_state(sites[1].to_state()).to_state() == sites[1].to_state()


# ---- fuzz: every decoder a site or the server runs on received data ---------------------------

_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.binary(max_size=80),
    st.lists(st.integers(-3, 10), max_size=6),
    st.lists(st.binary(max_size=200), max_size=6),
)
_keys = st.sampled_from(
    [
        "params",
        "sid",
        "server-pk",
        "c-pk",
        "s-pk",
        "sids",
        "c-pks",
        "s-pks",
        "to",
        "ct",
        "commit",
        "from",
        "tag",
        "survivors",
        "dropped",
        "b-sids",
        "b-shares",
        "sk-sids",
        "sk-shares",
        "failed",
        "nonce",
        "n",
        "t",
        "k",
        "r",
        "d",
    ]
)
_payload = st.dictionaries(_keys, _value, max_size=8)


def _fresh_round():
    params = new_params(4, 3, None, 1.0, 8)
    server = ServerRound(params)
    sites = {}
    for sid in (1, 2, 3, 4):
        sites[sid], r = SiteRound.advertise(server.setup(sid))
        server.receive_keys(sid, r)
    return params, server, sites


@settings(max_examples=25, deadline=None)
@given(p=_payload)
def test_fuzz_decoders_raise_only_secagg_errors(p) -> None:
    _params, server, sites = _fresh_round()
    calls = [
        lambda: SiteRound.advertise(p),
        lambda: RoundParams.decode(p),
        lambda: sites[1].share_keys(p),
        lambda: server.receive_keys(1, p),
        lambda: server.receive_shares(1, p),
        lambda: server.receive_unmask(1, p),
    ]
    for call in calls:
        with contextlib.suppress(SecAggError):
            call()
    site = sites[2]
    site.phase = 2
    for call in (
        lambda: site.masked_input(p, np.zeros(8, np.uint32)),
        lambda: (setattr(site, "phase", 3), site.unmask(p)),
        lambda: server.receive_masked(2, np.zeros(8, np.uint32), p),
    ):
        with contextlib.suppress(SecAggError):
            call()


def _valid_messages():
    """One valid message of every kind, from a real round (the mutation fuzz's seeds)."""
    _params, server, sites = _fresh_round()
    msgs = {"setup": server.setup(1), "keys": {"c-pk": server.sites[1].c_pk, "s-pk": b"s" * 32}}
    reqs = server.share_requests()
    msgs["share-request"] = reqs[1]
    for sid, req in reqs.items():
        reply = sites[sid].share_keys(req)
        msgs.setdefault("shares", reply)
        server.receive_shares(sid, reply)
    mreqs = server.mask_requests()
    msgs["mask-request"] = mreqs[1]
    ys = {}
    for sid, req in mreqs.items():
        ys[sid], r = sites[sid].masked_input(req, np.zeros(8, np.uint32))
        msgs.setdefault("masked", r)
    msgs["unmask-request"] = {"survivors": [1, 2, 3, 4], "dropped": []}
    msgs["unmask"] = {
        "b-sids": [1],
        "b-shares": [bytes(66)],
        "sk-sids": [],
        "sk-shares": [],
        "failed": [],
    }
    return msgs


_VALID = _valid_messages()


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(_VALID)), changes=_payload, drop=st.sets(_keys, max_size=2))
def test_fuzz_mutated_valid_messages(kind, changes, drop) -> None:
    p = {k: v for k, v in {**_VALID[kind], **changes}.items() if k not in drop}
    _params, server, sites = _fresh_round()
    handlers = {
        "setup": lambda: SiteRound.advertise(p),
        "keys": lambda: server.receive_keys(1, p),
        "share-request": lambda: sites[1].share_keys(p),
        "shares": lambda: server.receive_shares(1, p),
        "mask-request": lambda: (
            setattr(sites[1], "phase", 2),
            sites[1].masked_input(p, np.zeros(8, np.uint32)),
        ),
        "masked": lambda: (
            server.shared.add(1),
            server.receive_masked(1, np.zeros(8, np.uint32), p),
        ),
        "unmask-request": lambda: (setattr(sites[1], "phase", 3), sites[1].unmask(p)),
        "unmask": lambda: (server.masked.add(1), server.receive_unmask(1, p)),
    }
    with contextlib.suppress(SecAggError):
        handlers[kind]()


def test_distributed_noise_sums_to_the_central_noise() -> None:
    from orchestrator.secagg.dp import effective_multiplier, privatize

    rng = np.random.default_rng(3)
    z, clip, t, d = 1.1, 0.5, 7, 40_000
    big = rng.normal(0, 1, d)
    total = np.zeros(d)
    for _ in range(t):
        out, norm, _std = privatize(big, clip, z, t, rng)
        assert norm > clip
        total += out - big * (clip / norm)  # the noise alone
    # t survivors: std z * clip, within sampling error (relative se ~ 1/sqrt(2d) = 0.35%)
    assert abs(total.std() / (z * clip) - 1) < 0.02
    assert effective_multiplier(z, t, t + 2) > z
    clipped, _, _ = privatize(big, clip, 0.0, t, rng)
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-12)
