"""Robust strategies and reply weighting through the real strategy plumbing (aggregate_train),
against values worked out by hand. The math itself is tested in test_robust.py."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import load_config
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.federated.local_grid import ensure_task_identity
from strategies import build_strategy

ensure_task_identity()

GLOBAL = {"w": np.zeros(2, np.float32)}


@functools.cache
def job_for(*overrides: str) -> FederatedJob:
    """Loaded once per set of overrides (some tests build a strategy per reply order)."""
    return load_config(
        FederatedJob,
        None,
        ["federation.num_sites=8", "federation.min_sites=1", *overrides],
        "simulate-demo",
    )


def strategy(tmp_path, *overrides: str):
    """A fresh strategy (over a private copy of its job), built the way a run builds it."""
    job = copy.deepcopy(job_for(*overrides))
    s = build_strategy(job, update_keys=["w"], work_dir=tmp_path / "replies")
    s._global = to_numpy(from_numpy(GLOBAL))
    return s


def reply(value: list[float], n: int, site: str) -> Message:
    node = int(site.split("-")[1])
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    ins.metadata.__dict__["_message_id"] = f"ins-{site}"
    content = RecordDict(
        {
            "arrays": from_numpy({"w": np.array(value, np.float32)}),
            "metrics": MetricRecord({"num-examples": n}),
            "site": ConfigRecord({"name": site}),
        }
    )
    return Message(content=content, reply_to=ins)


def run(s, replies) -> np.ndarray:
    return run_notes(s, replies)[0]


def run_notes(s, replies) -> tuple[np.ndarray, dict[str, str]]:
    """The new ``w`` and the fold's per-site notes (from the round's outcome)."""
    outcome = s.fold_train(1, replies)
    assert outcome.arrays is not None
    return to_numpy(outcome.arrays)["w"], outcome.report.notes


def test_median_ignores_one_huge_update(tmp_path):
    s = strategy(tmp_path, "strategy.name=median")
    out = run(
        s,
        [
            reply([1, -1], 10, "site-1"),
            reply([2, -2], 10, "site-2"),
            reply([100, 100], 10, "site-3"),
        ],
    )
    np.testing.assert_array_equal(
        out, [2, -1]
    )  # per coordinate: median(1,2,100)=2, median(-1,-2,100)=-1
    assert list((tmp_path / "replies").iterdir()) == []  # the round's stored replies are gone


def test_trimmed_mean_names_the_trimmed_sites(tmp_path):
    s = strategy(tmp_path, "strategy.name=trimmed_mean", "strategy.trim_fraction=0.25")
    replies = [reply([v, v], 10, f"site-{i}") for i, v in enumerate([1.0, 2.0, 3.0, 100.0], 1)]
    out, notes = run_notes(s, replies)
    np.testing.assert_allclose(out, [2.5, 2.5])  # drop 1 and 100 per coordinate: (2+3)/2
    assert set(notes) == {"site-1", "site-4"} and "trimmed at 2/2" in notes["site-4"]


def test_krum_and_multikrum_select_the_honest_cluster(tmp_path):
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [1.05, 1.0]]
    attackers = [[50.0, -50.0], [49.0, -51.0]]
    values = honest + attackers
    for name, extra in (("krum", []), ("multikrum", ["strategy.num_selected=5"])):
        s = strategy(tmp_path, f"strategy.name={name}", "strategy.num_byzantine=2", *extra)
        out, notes = run_notes(s, [reply(v, 10, f"site-{i}") for i, v in enumerate(values, 1)])
        assert np.abs(out - 1.0).max() < 0.15, (name, out)
        assert {"site-6", "site-7"} <= set(notes)
        if name == "multikrum":  # the 5 honest replies, equally weighted: their mean
            np.testing.assert_allclose(out, np.mean(honest, axis=0), rtol=1e-6)


def test_krum_with_too_few_replies_skips_the_round_instead_of_crashing(tmp_path):
    s = strategy(tmp_path, "strategy.name=krum", "strategy.num_byzantine=2")
    new, metrics = s.aggregate_train(1, [reply([1, 1], 1, f"site-{i}") for i in (1, 2, 3)])
    assert new is None and metrics["sites-accepted"] == 3


def test_centered_clip_by_hand_and_its_center_survives_a_checkpoint(tmp_path):
    # tau = 1, one iteration from v0 = 0: x = (3,4) has norm 5 -> clipped to (0.6, 0.8);
    # x = (0.3, 0.4) has norm 0.5 -> kept. v = ((0.6+0.3)/2, (0.8+0.4)/2) = (0.45, 0.6).
    s = strategy(
        tmp_path, "strategy.name=centered_clip", "strategy.clip_radius=1", "strategy.clip_iters=1"
    )
    out, notes = run_notes(s, [reply([3, 4], 10, "site-1"), reply([0.3, 0.4], 10, "site-2")])
    np.testing.assert_allclose(out, [0.45, 0.6], rtol=1e-6)
    assert "site-1" in notes and "site-2" not in notes
    # The next round starts from this aggregate; a resumed strategy must too.
    resumed = strategy(
        tmp_path, "strategy.name=centered_clip", "strategy.clip_radius=1", "strategy.clip_iters=1"
    )
    resumed.load_state(s.state_meta(), s.state_arrays())
    np.testing.assert_array_equal(resumed.state_arrays()["center.w"], s.state_arrays()["center.w"])
    np.testing.assert_allclose(resumed.state_arrays()["center.w"], [0.45, 0.6], rtol=1e-6)


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [
        # examples: (10*1 + 10*1 + 10*1 + 1e9*100) / (30 + 1e9) ~= 100
        ("examples", 99.999997),
        # uniform: (1 + 1 + 1 + 100) / 4
        ("uniform", 25.75),
        # capped at 3 x median(10, 10, 10, 1e9) = 30: (30*1 + 30*100) / 60
        ("capped", 50.5),
    ],
)
def test_weighting_bounds_an_inflated_example_count(tmp_path, weighting, expected):
    s = strategy(tmp_path, f"strategy.weighting={weighting}", "strategy.weight_cap=3")
    replies = [reply([1, 1], 10, f"site-{i}") for i in (1, 2, 3)]
    replies.append(reply([100, 100], 10**9, "site-4"))
    out, notes = run_notes(s, replies)
    np.testing.assert_allclose(out, [expected, expected], rtol=1e-6)
    if weighting == "capped":
        assert "weight capped" in notes["site-4"]


def test_fixed_update_norm_clip_streams_and_names_the_clipped_site(tmp_path):
    s = strategy(tmp_path, "strategy.clip_update_norm=1.0")
    # (30, 40) has norm 50 -> scaled to (0.6, 0.8); (0.3, 0.4) stays. Mean = (0.45, 0.6).
    out, notes = run_notes(s, [reply([30, 40], 10, "site-1"), reply([0.3, 0.4], 10, "site-2")])
    np.testing.assert_allclose(out, [0.45, 0.6], rtol=1e-6)
    assert "clipped" in notes["site-1"]
    assert not (tmp_path / "replies").exists()  # streamed: nothing stored


def test_update_norm_clip_relative_to_the_median(tmp_path):
    s = strategy(tmp_path, "strategy.clip_update_norm=2.0", "strategy.clip_relative=true")
    # norms 5, 5, 50: median 5, bound 10 -> (30, 40) scaled to (6, 8). Mean of (3,4),(3,4),(6,8).
    out, notes = run_notes(
        s, [reply([3, 4], 10, "site-1"), reply([3, 4], 10, "site-2"), reply([30, 40], 10, "site-3")]
    )
    np.testing.assert_allclose(out, [4.0, 16 / 3], rtol=1e-6)
    assert list(notes) == ["site-3"]


def test_krum_config_needs_enough_sites():
    from orchestrator.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"strategy\.num_byzantine"):
        load_config(
            FederatedJob, None, ["strategy.name=krum", "strategy.num_byzantine=2"], "simulate-demo"
        )


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "multikrum", "centered_clip"])
def test_robust_aggregate_is_the_same_bits_in_any_reply_order(tmp_path, name):
    import itertools

    rng = np.random.default_rng(0)
    values = [rng.normal(size=2).astype(np.float32).tolist() for _ in range(5)]
    outs = []
    for order in itertools.islice(itertools.permutations(range(5)), 0, 120, 17):
        s = strategy(tmp_path, f"strategy.name={name}", "strategy.num_byzantine=1")
        outs.append(run(s, [reply(values[i], 10 + i, f"site-{i + 1}") for i in order]))
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
