"""Strategy math with hand-worked values, equivalence with Flower's FedAvg, streaming memory and
reply validation. No Ray, no processes: replies are built as Flower Messages in this process."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from clients.train import proximal_term
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.federated.local_grid import ensure_task_identity
from strategies import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi
from strategies.fedopt import adaptive_step, update_moments
from strategies.reply_sources import StackedReplies
from strategies.running_sum import RunningSum, apply_sgd_from_sum, fold_into
from strategies.sampling import Sampling
from strategies.weighted_mean import weighted_mean

ensure_task_identity()


def reply(
    update: dict[str, np.ndarray], n: float, node: int = 1, **extra_metrics: float
) -> Message:
    """A train reply as a site would send it (the instruction it answers is made up here)."""
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    ins.metadata.__dict__["_message_id"] = f"ins-{node}"
    content = RecordDict(
        {
            "arrays": from_numpy(update),
            "metrics": MetricRecord({"num-examples": n, **extra_metrics}),
        }
    )
    return Message(content=content, reply_to=ins)


def start(strategy, global_: dict[str, np.ndarray]) -> None:
    """What configure_train records: the global arrays the updates are relative to."""
    strategy._global = to_numpy(from_numpy(global_))


# ---- pure math, by hand ------------------------------------------------------------------------


def test_weighted_mean_by_hand():
    acc = RunningSum()
    acc.fold({"a": np.array([1.0, 2.0], np.float32)}, 1)
    acc.fold({"a": np.array([3.0, 6.0], np.float32)}, 3)
    # (1*[1,2] + 3*[3,6]) / 4 = [10/4, 20/4]
    np.testing.assert_allclose(acc.mean()["a"], [2.5, 5.0])


def test_fold_into_chunked_matches_naive():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(300_001).astype(np.float32)  # > one chunk, ragged tail
    b = rng.standard_normal(300_001).astype(np.float32)
    expected = a + np.float32(0.37) * b
    fold_into(a, b, 0.37)
    np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_fedavg_strategy_by_hand():
    s = FedAvg()
    start(s, {"w": np.array([1.0, 1.0], np.float32), "frozen": np.zeros(3, np.float32)})
    replies = [
        reply({"w": np.array([1.0, 2.0], np.float32)}, 1, node=1, **{"train-loss": 2.0}),
        reply({"w": np.array([3.0, 6.0], np.float32)}, 3, node=2, **{"train-loss": 1.0}),
    ]
    arrays, metrics = s.aggregate_train(1, replies)
    out = to_numpy(arrays)
    np.testing.assert_allclose(out["w"], [1 + 2.5, 1 + 5.0])  # w + mean update
    np.testing.assert_array_equal(out["frozen"], 0)  # keys without updates are unchanged
    assert metrics["train-loss"] == pytest.approx((1 * 2.0 + 3 * 1.0) / 4)
    assert metrics["sites-accepted"] == 2 and metrics["sites-rejected"] == 0


def test_each_reply_norm_and_wire_size_is_computed_once(monkeypatch):
    """Central DP and the record both need a reply's norm, validation and the record its wire
    size: each is computed once per reply, and the clip still sees the unclipped norm."""
    import strategies.base
    import strategies.pipeline
    import strategies.validation
    from strategies.privacy import CentralDP

    calls = {"norm": 0, "bytes": 0}
    norm, size = strategies.pipeline.update_norm, strategies.validation.wire_bytes

    def counted_norm(update):
        calls["norm"] += 1
        return norm(update)

    def counted_size(msg):
        calls["bytes"] += 1
        return size(msg)

    monkeypatch.setattr(strategies.pipeline, "update_norm", counted_norm)
    monkeypatch.setattr(strategies.validation, "wire_bytes", counted_size)
    dp = CentralDP(1.0, 0.0, 2, rng=np.random.default_rng(0))
    s = FedAvg(central_dp=dp)
    start(s, {"w": np.zeros(2, np.float32)})
    dp.begin_round(2)
    replies = [
        reply({"w": np.array([3.0, 4.0], np.float32)}, 1, node=1),
        reply({"w": np.array([0.3, 0.4], np.float32)}, 1, node=2),
    ]
    outcome = s.fold_train(1, replies)
    assert calls == {"norm": 2, "bytes": 2}
    assert sorted(r.metrics["update-norm"] for r in outcome.report.sites) == pytest.approx([0.5, 5])
    assert outcome.privacy["clipped"] == 1


def test_the_server_records_each_update_norm_itself_not_the_sites_claim():
    """``update-norm`` (what a user picks privacy.clip_norm from) is the L2 norm of the update as
    received, before any server clip; a site reporting its own is overridden and not averaged."""
    from strategies.privacy import CentralDP

    dp = CentralDP(1.0, 0.0, 2, rng=np.random.default_rng(0))
    s = FedAvg(central_dp=dp)
    start(s, {"w": np.zeros(2, np.float32)})
    dp.begin_round(2)
    replies = [
        reply({"w": np.array([3.0, 4.0], np.float32)}, 1, node=1, **{"update-norm": 0.01}),
        reply({"w": np.array([0.3, 0.4], np.float32)}, 1, node=2),
    ]
    outcome = s.fold_train(1, replies)
    metrics = outcome.metrics
    norms = sorted(site.metrics["update-norm"] for site in outcome.report.sites)
    assert norms == pytest.approx([0.5, 5.0])  # 5.0: before the DP clip to 1.0
    assert metrics["update-norm-median"] == pytest.approx(2.75)
    assert dp.round_columns() == {"clip": 1.0, "clipped": 1}


def test_a_clip_that_shortens_most_updates_is_hinted_once_with_the_server_lr_to_use(caplog):
    from strategies.privacy import CentralDP, clip_shrink_hint

    assert clip_shrink_hint(0.2, [0.1, 0.22, 0.24], 1.0) is None  # median within 1.25x
    hint = clip_shrink_hint(0.2, [0.3, 0.4, 0.5], 1.0)
    assert "clipped 3 of 3" in hint and "~0.50x" in hint and "server_lr toward 2" in hint

    def round_of(s, dp, r):
        start(s, {"w": np.zeros(2, np.float32)})
        dp.begin_round(3)
        ups = [np.array([0.0, v], np.float32) for v in (0.3, 0.4, 0.5)]
        s.aggregate_train(r, [reply({"w": u}, 1, node=i) for i, u in enumerate(ups)])

    dp = CentralDP(0.2, 0.0, 3, rng=np.random.default_rng(0))
    s = FedAvg(central_dp=dp)
    with caplog.at_level("WARNING"):
        round_of(s, dp, 1)
        round_of(s, dp, 2)
    hints = [r.getMessage() for r in caplog.records if "server_lr toward" in r.getMessage()]
    assert len(hints) == 1 and hints[0].startswith("round 1:")
    caplog.clear()
    dp2 = CentralDP(0.2, 0.0, 3, rng=np.random.default_rng(0))
    with caplog.at_level("WARNING"):  # FedAdam's step does not scale with the mean: no hint
        round_of(FedAdam(central_dp=dp2), dp2, 1)
    assert not [r for r in caplog.records if "server_lr toward" in r.getMessage()]


def test_server_lr_scales_the_update():
    s = FedAvg(eta=0.5)
    start(s, {"w": np.array([1.0], np.float32)})
    arrays, _ = s.aggregate_train(1, [reply({"w": np.array([2.0], np.float32)}, 10)])
    np.testing.assert_allclose(to_numpy(arrays)["w"], [2.0])  # 1 + 0.5 * 2


def test_fedadam_step_by_hand():
    # delta = 0.5, b1 = 0.9, b2 = 0.99, eta = 0.1, tau = 0.01, m0 = v0 = 0:
    # m = 0.1 * 0.5 = 0.05; v = 0.01 * 0.25 = 0.0025; sqrt(v) = 0.05
    # w = 1 + 0.1 * 0.05 / (0.05 + 0.01) = 1 + 0.083333
    s = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    start(s, {"w": np.array([1.0], np.float32)})
    arrays, _ = s.aggregate_train(1, [reply({"w": np.array([0.5], np.float32)}, 4)])
    np.testing.assert_allclose(to_numpy(arrays)["w"], [1 + 0.1 * 0.05 / 0.06], rtol=1e-6)
    np.testing.assert_allclose(s.m["w"], [0.05])
    np.testing.assert_allclose(s.v["w"], [0.0025])
    # Second round, delta = -0.5: m = 0.9*0.05 - 0.05 = -0.005; v = 0.99*0.0025 + 0.0025
    m, v = update_moments("fedadam", s.m["w"], s.v["w"], np.array([-0.5], np.float32), 0.9, 0.99)
    np.testing.assert_allclose(m, [-0.005], atol=1e-7)
    np.testing.assert_allclose(v, [0.99 * 0.0025 + 0.0025], rtol=1e-6)


def test_fedyogi_and_fedadagrad_second_moments_by_hand():
    d = np.array([0.5], np.float32)
    v_prev = np.array([1.0], np.float32)
    # Yogi: v - (1-b2) d^2 sign(v - d^2) = 1 - 0.01 * 0.25 * sign(0.75) = 0.9975
    _, v = update_moments("fedyogi", None, v_prev, d, 0.9, 0.99)
    np.testing.assert_allclose(v, [0.9975], rtol=1e-6)
    # Adagrad: v + d^2 = 1.25
    _, v = update_moments("fedadagrad", None, v_prev, d, 0.9, 0.99)
    np.testing.assert_allclose(v, [1.25], rtol=1e-6)
    # Step: 1 + 0.1 * 0.05 / (sqrt(1.25) + 0.01)
    out = adaptive_step(np.array([1.0], np.float32), np.array([0.05], np.float32), v, 0.1, 0.01)
    np.testing.assert_allclose(out, [1 + 0.005 / (np.sqrt(1.25) + 0.01)], rtol=1e-6)
    for cls in (FedYogi, FedAdagrad):
        s = cls(eta=0.1, tau=0.01)
        start(s, {"w": np.array([1.0], np.float32)})
        arrays, _ = s.aggregate_train(1, [reply({"w": d}, 1)])
        assert np.isfinite(to_numpy(arrays)["w"]).all()


def test_adaptive_state_roundtrip_continues_identically():
    g = {"w": np.array([1.0, -1.0], np.float32)}
    d1, d2 = np.array([0.5, 0.1], np.float32), np.array([-0.2, 0.3], np.float32)
    a = FedAdam(eta=0.1)
    start(a, g)
    arrays, _ = a.aggregate_train(1, [reply({"w": d1}, 1)])
    b = FedAdam(eta=0.1)
    b.load_state(a.state_meta(), a.state_arrays())  # what a resumed server does
    g2 = to_numpy(arrays)
    start(a, g2)
    start(b, g2)
    out_a, _ = a.aggregate_train(2, [reply({"w": d2}, 1)])
    out_b, _ = b.aggregate_train(2, [reply({"w": d2}, 1)])
    np.testing.assert_array_equal(to_numpy(out_a)["w"], to_numpy(out_b)["w"])
    assert a.rng.random() == b.rng.random()  # sampling RNG restored too


def test_fedprox_term_by_hand_and_its_gradient():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True)}
    g = {"a": torch.tensor([0.0, 0.0])}
    term = proximal_term(w, g, mu=0.5)
    assert term.item() == pytest.approx(0.5 / 2 * (1 + 4))  # mu/2 * ||w - w_g||^2 = 1.25
    term.backward()
    torch.testing.assert_close(w["a"].grad, torch.tensor([0.5, 1.0]))  # mu * (w - w_g)


def test_fedprox_sends_mu_to_sites():
    from orchestrator.federated.local_grid import LocalGrid

    seen: list[float] = []

    def client(msg: Message, ctx) -> Message:
        seen.append(msg.content["config"]["proximal-mu"])
        return msg

    grid = LocalGrid(client, [{}, {}])  # type: ignore[arg-type]
    msgs = FedProx(proximal_mu=0.25).configure_train(
        3, from_numpy({"w": np.zeros(2, np.float32)}), ConfigRecord({}), grid
    )
    for m in msgs:
        assert m.content["config"]["proximal-mu"] == 0.25
        assert m.content["config"]["server-round"] == 3


# ---- equivalence with Flower's own FedAvg ------------------------------------------------------


def test_same_global_model_as_flowers_fedavg():
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

    rng = np.random.default_rng(1)
    shapes = {"emb": (50, 8), "w": (8, 8), "b": (8,)}
    global_ = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    locals_ = [
        {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in global_.items()}
        for _ in range(5)
    ]
    ns = [10, 200, 35, 1, 77]
    # Flower's FedAvg averages the sites' full models...
    flower_arrays, _ = FlowerFedAvg().aggregate_train(
        1, [reply(m, n, node=i) for i, (m, n) in enumerate(zip(locals_, ns, strict=True))]
    )
    # ...ours averages their updates and adds the mean to the global model.
    ours = FedAvg()
    start(ours, global_)
    deltas = [{k: m[k] - global_[k] for k in m} for m in locals_]
    our_arrays, _ = ours.aggregate_train(
        1, [reply(d, n, node=i) for i, (d, n) in enumerate(zip(deltas, ns, strict=True))]
    )
    flower_np, ours_np = to_numpy(flower_arrays), to_numpy(our_arrays)
    for k in shapes:
        np.testing.assert_allclose(ours_np[k], flower_np[k], rtol=1e-5, atol=1e-6)


# ---- streaming memory --------------------------------------------------------------------------


def _peak_bytes_aggregating(k: int, numel: int) -> int:
    """tracemalloc peak while K replies arrive one at a time and are folded (numpy buffers and
    message bytes are both traced)."""
    s = FedAvg()
    start(s, {"w": np.zeros(numel, np.float32)})

    def arriving() -> Iterator[Message]:
        for i in range(k):
            yield reply({"w": np.full(numel, float(i), np.float32)}, 1 + i, node=i)

    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        arrays, _ = s.aggregate_train(1, arriving())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arrays is not None
    return peak


def test_streaming_peak_memory_does_not_grow_with_replies():
    numel = 1_000_000  # 4 MB per update
    peak_2 = _peak_bytes_aggregating(2, numel)
    peak_32 = _peak_bytes_aggregating(32, numel)
    model = numel * 4
    # Holding all 32 replies would add ~30 models; streaming stays within one model of K=2.
    assert peak_32 < peak_2 + model, (peak_2 / model, peak_32 / model)
    assert peak_32 < 8 * model


# ---- malformed replies ---------------------------------------------------------------------------


def test_malformed_replies_are_rejected_and_the_round_completes(caplog):
    g = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    good = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    s = FedAvg(update_keys=["w", "b"])
    start(s, g)
    bad = {
        "missing key": {"w": good["w"]},
        "extra key": {**good, "x": np.ones(1, np.float32)},
        "wrong shape": {**good, "w": np.ones((3, 2), np.float32)},
        "wrong dtype": {**good, "w": np.ones((2, 2), np.float64)},
        "nan": {**good, "b": np.array([np.nan, 0], np.float32)},
        "inf": {**good, "w": np.full((2, 2), np.inf, np.float32)},
    }
    replies = [reply(good, 10, node=0)]
    replies += [reply(u, 10, node=i + 1) for i, u in enumerate(bad.values())]
    replies.append(reply(good, 0, node=99))  # no usable example count
    err = Message(
        content=RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type="train"
    )
    err.metadata.__dict__["_message_id"] = "x"
    from flwr.app import Error

    replies.append(Message(error=Error(code=0, reason="site crashed"), reply_to=err))
    with caplog.at_level("WARNING"):
        outcome = s.fold_train(1, replies)
    arrays, metrics = outcome.arrays, outcome.metrics
    assert arrays is not None  # the round went on with the one good reply
    np.testing.assert_array_equal(to_numpy(arrays)["w"], 1.0)
    assert metrics["sites-accepted"] == 1
    assert metrics["sites-rejected"] == len(bad) + 2
    reasons = " | ".join(r.reason for r in outcome.report.sites if not r.accepted)
    for needle in ("missing=", "extra=", "shape", "dtype", "NaN or Inf", "num-examples", "crashed"):
        assert needle in reasons, reasons


def test_too_few_valid_replies_keep_the_global_model():
    s = FedAvg(sampling=Sampling(min_sites=2))
    start(s, {"w": np.zeros(2, np.float32)})
    arrays, metrics = s.aggregate_train(1, [reply({"w": np.ones(2, np.float32)}, 5)])
    assert arrays is None and metrics["sites-accepted"] == 1


def _site_updates(n: int = 200_003) -> list[dict[str, np.ndarray]]:
    """Three sites' updates of different scales, larger than one fold chunk."""
    rng = np.random.default_rng(5)
    return [
        {
            "w": (rng.standard_normal(n) * s).astype(np.float32),
            "b": rng.standard_normal(7, np.float32),
        }
        for s in (1e-3, 3e-2, 1e-4)
    ]


@pytest.mark.parametrize("cls", [FedAvg, FedAdam])
def test_aggregate_is_the_same_bits_in_any_reply_order(cls):
    """Sites reply in whatever order the network gives; the new global model must not depend
    on it (a resumed or rerun federation reproduces the same model)."""
    import itertools

    ups, ns = _site_updates(), [240, 17, 1003]
    results = []
    for order in itertools.permutations(range(3)):
        s = cls()
        start(s, {"w": np.full(ups[0]["w"].shape, 0.5, np.float32), "b": np.zeros(7, np.float32)})
        arrays, _ = s.aggregate_train(1, [reply(ups[i], ns[i], node=i + 1) for i in order])
        assert arrays is not None
        results.append(to_numpy(arrays))
    for r in results[1:]:
        for k in r:
            assert r[k].dtype == np.float32
            np.testing.assert_array_equal(r[k], results[0][k], err_msg=k)


def test_float32_accumulation_depends_on_reply_order():
    """Why float64 is the default: with a float32 sum the order changes the last bits."""
    ups, ns = _site_updates(), [240, 17, 1003]
    means = []
    for order in ((0, 1, 2), (2, 1, 0)):
        acc = RunningSum(np.float32)
        for i in order:
            acc.fold(ups[i], ns[i])
        means.append(acc.mean()["w"])
    assert (means[0] != means[1]).sum() > 0
    # ... only at the rounding level of the largest term (~1e-3 here): a few float32 ULPs.
    np.testing.assert_allclose(means[0], means[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fold_and_step_handle_non_contiguous_arrays(dtype):
    """Transposed (Fortran-ordered) views: the chunked in-place passes must not write to a
    temporary copy and lose the result."""
    rng = np.random.default_rng(3)
    ups = [rng.standard_normal((300, 700)).astype(np.float32).T for _ in range(3)]
    g = rng.standard_normal((300, 700)).astype(np.float32).T
    want = (ups[0] + 2 * ups[1] + 3 * ups[2]) / 6
    for how in ("mean", "step"):
        acc = RunningSum(dtype)
        for u, n in zip(ups, (1, 2, 3), strict=True):
            acc.fold({"a": u}, n)
        got = acc.mean()["a"] if how == "mean" else apply_sgd_from_sum({"a": g}, acc, 1.0)["a"] - g
        assert got.shape == (700, 300)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=how)


def test_mean_comes_back_in_the_update_dtype():
    acc = RunningSum()
    acc.fold({"a": np.array([1, 2], np.float16), "b": np.array([1.0], np.float32)}, 2)
    acc.fold({"a": np.array([3, 4], np.float16), "b": np.array([2.0], np.float32)}, 2)
    out = acc.mean()
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.float32
    np.testing.assert_array_equal(out["a"], [2.0, 3.0])
    np.testing.assert_array_equal(out["b"], [1.5])


def test_weighted_mean_reference_agrees_with_streaming():
    rng = np.random.default_rng(2)
    ups = [{"a": rng.standard_normal(10).astype(np.float32)} for _ in range(4)]
    ws = [1.0, 2.0, 3.0, 4.0]
    acc = RunningSum()
    for u, w in zip(ups, ws, strict=True):
        acc.fold(u, w)
    stored = StackedReplies({"a": np.stack([u["a"] for u in ups])}, ws)
    np.testing.assert_allclose(acc.mean()["a"], weighted_mean(stored)["a"], rtol=1e-5, atol=1e-7)


def test_arrayrecord_roundtrip_is_a_view():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    rec = ArrayRecord({"a": from_numpy({"a": a})["a"]})
    v = to_numpy(rec)["a"]
    np.testing.assert_array_equal(v, a)
    assert not v.flags.writeable  # a view of the message bytes, not a copy


class _RejoiningGrid:
    """Only get_node_ids() is used by sampling: site 3 reconnects after ``back_after`` calls."""

    def __init__(self, back_after: int) -> None:
        self.calls = 0
        self.back_after = back_after

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [1, 2, 3] if self.calls > self.back_after else [1, 2]


def test_later_rounds_wait_for_a_rejoining_site_then_go_on_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import strategies.sampling
    from strategies import FedAvg

    # The 1 s polls are recorded instead of slept (the test would spend 2 s asleep otherwise).
    slept: list[float] = []
    monkeypatch.setattr(strategies.sampling.time, "sleep", slept.append)
    s = FedAvg(
        sampling=Sampling(
            min_sites=2, min_available_sites=3, rejoin_wait_s=5.0, wait_for_sites_s=30.0
        )
    )
    s._federation_seen = True  # a round has already run
    assert s.sample(_RejoiningGrid(back_after=2), None) == [1, 2, 3]  # waited, got all 3
    assert slept == [1.0, 1.0]  # two polls while site 3 was away
    impatient = FedAvg(sampling=Sampling(min_sites=2, min_available_sites=3, rejoin_wait_s=0.0))
    impatient._federation_seen = True
    assert impatient.sample(_RejoiningGrid(back_after=2), None) == [1, 2]  # min_sites suffice


class _RestartedSiteGrid:
    """Site 3 crashed (node 3 still listed: its heartbeat has not expired) and its restart
    connects as node 4 after ``back_after`` calls."""

    def __init__(self, back_after: int) -> None:
        self.calls = 0
        self.back_after = back_after

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [1, 2, 3, 4] if self.calls > self.back_after else [1, 2, 3]


def test_a_node_that_dropped_out_is_not_sent_to_while_its_site_may_rejoin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import strategies.sampling
    from strategies import FedAvg

    slept: list[float] = []
    monkeypatch.setattr(strategies.sampling.time, "sleep", slept.append)
    sampling = Sampling(min_sites=2, min_available_sites=3, rejoin_wait_s=5.0)
    s = FedAvg(sampling=sampling)
    s._federation_seen = True
    s.note_dropped([3])  # node 3 sent nothing last round
    assert s.sample(_RestartedSiteGrid(back_after=2), None) == [1, 2, 4]  # waited for node 4
    assert slept == [1.0, 1.0]
    # Without a restart, once the grace period is over node 3 counts again (a straggler).
    monkeypatch.setattr(strategies.sampling.time, "sleep", lambda _: None)
    # The grace period may outlast wait_for_sites_s (which bounds only the wait for min_sites).
    slow = FedAvg(sampling=Sampling(min_sites=2, min_available_sites=3, rejoin_wait_s=1e9,
                                    wait_for_sites_s=0.0))  # fmt: skip
    slow._federation_seen = True
    slow.note_dropped([3])
    assert slow.sample(_RestartedSiteGrid(back_after=5), None) == [1, 2, 4]
    late = FedAvg(sampling=Sampling(min_sites=2, min_available_sites=3, rejoin_wait_s=0.0))
    late._federation_seen = True
    late.note_dropped([3])
    assert late.sample(_RestartedSiteGrid(back_after=10**6), None) == [1, 2, 3]


def test_each_strategy_builds_itself_from_its_config_sections():
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config
    from strategies import build_strategy

    def built(*overrides: str):
        job = load_config(FederatedJob, None, list(overrides), "simulate-demo")
        return build_strategy(job, update_keys=["w"])

    prox = built("strategy.name=fedprox", "strategy.proximal_mu=0.25")
    assert isinstance(prox, FedProx) and prox.extra_train_config() == {"proximal-mu": 0.25}
    adam = built("strategy.name=fedadam", "strategy.beta1=0.5", "strategy.tau=0.1")
    assert isinstance(adam, FedAdam) and (adam.beta1, adam.tau, adam.eta) == (0.5, 0.1, 0.01)
    avgm = built("strategy.name=fedavgm", "strategy.server_momentum=0.7", "strategy.server_lr=2")
    assert (avgm.beta, avgm.eta) == (0.7, 2.0)
    s = built(
        "federation.sites_per_round=3", "federation.min_sites=2", "strategy.accumulate=float32"
    )
    assert (s.sites_per_round, s.min_sites, s.fold.accumulate) == (3, 2, "float32")
    assert s.update_keys == {"w"}
