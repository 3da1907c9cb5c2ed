"""Drift correction: FedAvgM and SCAFFOLD by hand (two sites), SCAFFOLD vs FedAvg on a non-IID
problem where FedAvg provably drifts, hostile control variates, LoRA replies, and exact resume
of server and site state through the in-process LocalGrid."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, RecordDict

from clients.client_app import train as client_train
from clients.scaffold import received_control_variate, site_control_update
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.contract.messages import DELTA_C, SCAFFOLD_C
from orchestrator.contract.model import model_state
from orchestrator.federated.setup import prepare
from strategies import FedAvgM, Scaffold
from strategies.fedavgm import momentum_step
from strategies.scaffold import server_control_update
from tests.unit.test_federated_rounds import _Ctx, job, train_message
from tests.unit.test_reply_fuzz import HOSTILE_ARRAYS
from tests.unit.test_strategies import reply, start

F32 = np.float32


def scaffold_reply(delta_y, delta_c, n: float, node: int):
    msg = reply({"w": np.asarray(delta_y, F32)}, n, node)
    msg.content[DELTA_C] = from_numpy({"w": np.asarray(delta_c, F32)})
    return msg


# ---- FedAvgM --------------------------------------------------------------------------------


def test_fedavgm_two_sites_by_hand_and_resume_continues_identically():
    s = FedAvgM(server_momentum=0.9)
    start(s, {"w": np.array([1.0], F32)})
    # Round 1: mean update (1*0.5 + 3*1.0) / 4 = 0.875; v = 0.875; w = 1 + 0.875
    out, _ = s.aggregate_train(
        1, [reply({"w": np.array([0.5], F32)}, 1, 1), reply({"w": np.array([1.0], F32)}, 3, 2)]
    )
    w1 = to_numpy(out)["w"]
    np.testing.assert_allclose(w1, [1.875], rtol=1e-7)
    np.testing.assert_allclose(s.v["w"], [0.875], rtol=1e-7)
    resumed = FedAvgM(server_momentum=0.9)
    resumed.load_state(s.state_meta(), s.state_arrays())  # what a restarted server does
    # Round 2: mean -0.5; v = 0.9 * 0.875 - 0.5 = 0.2875; w = 1.875 + 0.2875 = 2.1625
    outs = []
    for strat in (s, resumed):
        start(strat, {"w": w1})
        o, _ = strat.aggregate_train(
            2,
            [reply({"w": np.array([-0.5], F32)}, 1, 1), reply({"w": np.array([-0.5], F32)}, 3, 2)],
        )
        outs.append(to_numpy(o)["w"])
    np.testing.assert_allclose(outs[0], [2.1625], rtol=1e-6)
    np.testing.assert_array_equal(outs[0], outs[1])
    # beta = 0 is FedAvg; eta scales the momentum step.
    w, v = momentum_step(np.array([1.0], F32), np.array([4.0], F32), np.array([2.0], F32), 0.5, 0.0)
    np.testing.assert_allclose((w, v), ([2.0], [2.0]))


# ---- SCAFFOLD by hand -----------------------------------------------------------------------


def test_scaffold_site_control_variate_by_hand():
    # c_i+ = c_i - c - delta_y / (K lr) = 0.5 - 1.0 + 0.4 / 0.2 = 1.5; delta_c = 1.0
    c_new, delta_c = site_control_update(
        {"w": np.array([1.0], F32)},
        {"w": np.array([0.5], F32)},
        {"w": np.array([-0.4], F32)},
        2,
        0.1,
    )
    np.testing.assert_allclose(c_new["w"], [1.5], rtol=1e-6)
    np.testing.assert_allclose(delta_c["w"], [1.0], rtol=1e-6)
    assert c_new["w"].dtype == F32


def test_scaffold_server_two_sites_of_four_by_hand():
    s = Scaffold(update_keys=["w"])
    start(s, {"w": np.array([1.0, 0.0], F32)})
    s.num_nodes = 4  # two of four connected sites reply
    sent = to_numpy(s.extra_train_records()[SCAFFOLD_C])
    np.testing.assert_array_equal(sent["w"], [0.0, 0.0])  # c starts at zero
    assert s.extra_train_config() == {"scaffold": True}
    out, metrics = s.aggregate_train(
        1,
        [
            scaffold_reply([0.2, -0.4], [1.0, 2.0], 1, 1),
            scaffold_reply([0.6, 0.0], [-1.0, 6.0], 3, 2),
        ],
    )
    # x + mean delta_y = [1, 0] + [(0.2 + 1.8) / 4, -0.4 / 4] = [1.5, -0.1]
    np.testing.assert_allclose(to_numpy(out)["w"], [1.5, -0.1], rtol=1e-6)
    # c + 2/4 * mean delta_c = 0.5 * [(1 - 3) / 4, (2 + 18) / 4] = [-0.25, 2.5]
    np.testing.assert_allclose(s.c["w"], [-0.25, 2.5], rtol=1e-6)
    assert metrics["bytes-received"] > 2 * 2 * 2 * 4  # update and delta_c counted
    resumed = Scaffold(update_keys=["w"])
    resumed.load_state(s.state_meta(), s.state_arrays())
    np.testing.assert_array_equal(resumed.c["w"], s.c["w"])
    assert server_control_update({"w": np.zeros(1, F32)}, {"w": np.ones(1, F32)}, 1.0)["w"] == 1


@pytest.mark.parametrize("case", ["missing", "shape", *sorted(HOSTILE_ARRAYS)])
def test_hostile_delta_c_is_rejected_and_the_round_goes_on(case):
    s = Scaffold(update_keys=["w", "b"])
    start(s, {"w": np.zeros((2, 3), F32), "b": np.zeros(3, F32)})
    s.num_nodes = 2
    good = {"w": np.ones((2, 3), F32), "b": np.ones(3, F32)}
    bad = reply(good, 1, 1)
    if case == "shape":
        bad.content[DELTA_C] = from_numpy({**good, "b": np.ones(4, F32)})
    elif case != "missing":
        bad.content[DELTA_C] = ArrayRecord({"w": from_numpy(good)["w"], "b": HOSTILE_ARRAYS[case]})
    honest = reply(good, 1, 2)
    honest.content[DELTA_C] = from_numpy(good)
    out, metrics = s.aggregate_train(1, [bad, honest])
    assert out is not None and metrics["sites-accepted"] == 1 and metrics["sites-rejected"] == 1
    np.testing.assert_allclose(s.c["b"], 0.5 * np.ones(3))  # only the honest delta_c, share 1/2


def test_a_site_refuses_a_hostile_server_control_variate():
    like = {"w": np.zeros(3, F32)}
    for rec, match in [
        (RecordDict(), "no 'scaffold-c'"),
        (RecordDict({SCAFFOLD_C: from_numpy({"v": np.zeros(3, F32)})}), "differ"),
        (RecordDict({SCAFFOLD_C: from_numpy({"w": np.zeros(4, F32)})}), "expected"),
        (RecordDict({SCAFFOLD_C: from_numpy({"w": np.array([0, np.nan, 0], F32)})}), "NaN"),
    ]:
        with pytest.raises(ValueError, match=match):
            received_control_variate(rec, like)
    empty = received_control_variate(RecordDict({SCAFFOLD_C: ArrayRecord()}), like)
    np.testing.assert_array_equal(empty["w"], np.zeros(3))


# ---- SCAFFOLD removes the drift FedAvg provably has -----------------------------------------


def federate(scaffold: bool, rounds: int = 300, steps: int = 20, lr: float = 0.5) -> np.ndarray:
    """Two sites with quadratic losses ``0.5 (x - b_i)' A_i (x - b_i)`` of different curvature
    (non-IID). K local SGD steps each round; full participation, equal weights."""
    A = [np.diag([1.0, 0.1]), np.diag([0.1, 1.0])]
    b = [np.array([1.0, -1.0]), np.array([-1.0, 1.0])]
    x = np.zeros(2)
    c = {"x": np.zeros(2)}
    c_i = [{"x": np.zeros(2)} for _ in A]
    for _ in range(rounds):
        deltas, delta_cs = [], []
        for i in range(2):
            y = x.copy()
            for _ in range(steps):
                grad = A[i] @ (y - b[i])
                y -= lr * (grad + (c["x"] - c_i[i]["x"] if scaffold else 0.0))
            deltas.append(y - x)
            if scaffold:
                c_i[i], dc = site_control_update(c, c_i[i], {"x": y - x}, steps, lr)
                delta_cs.append(dc["x"])
        x = x + np.mean(deltas, axis=0)
        if scaffold:
            c = server_control_update(c, {"x": np.mean(delta_cs, axis=0)}, 1.0)
    return x


def test_scaffold_converges_to_the_global_optimum_where_fedavg_drifts():
    # Optimum of the mean loss: (sum A_i)^-1 sum A_i b_i = [0.9 / 1.1, 0.9 / 1.1]
    optimum = np.array([0.9 / 1.1, 0.9 / 1.1])
    # FedAvg's fixed point: x = mean_i(b_i + (I - lr A_i)^K (x - b_i)) = [0.218, 0.218] here.
    fedavg = federate(scaffold=False)
    scaffold = federate(scaffold=True)
    assert np.abs(fedavg - optimum).max() > 0.5
    np.testing.assert_allclose(scaffold, optimum, atol=1e-6)


# ---- through the ClientApp and the round loop -----------------------------------------------


def test_lora_scaffold_reply_holds_delta_c_for_the_adapters_only(cache_dir):
    setup = prepare(job(cache_dir, "finetune.mode=lora", "finetune.lora_r=4"))
    state = {k: v.numpy() for k, v in model_state(setup.model).items()}
    msg = train_message(setup, from_numpy(state))
    msg.content["config"]["scaffold"] = True
    msg.content[SCAFFOLD_C] = ArrayRecord()  # round 1 of a server that learns the keys: zeros
    ctx = _Ctx({"partition-id": 0, "num-partitions": 4})
    ctx.state, ctx.run_id = RecordDict(), 1
    out = client_train(msg, ctx)  # type: ignore[arg-type]
    update, delta_c = to_numpy(out.content["arrays"]), to_numpy(out.content[DELTA_C])
    assert set(delta_c) == set(update) == set(setup.update_keys)
    assert any(np.abs(v).max() > 0 for v in delta_c.values())
    assert any(k.startswith("fedray-site-state/") for k in ctx.state)  # c_i kept for round 2


# ---- config and --dry-run -------------------------------------------------------------------


def test_config_validates_the_drift_settings_and_dry_run_shows_them():
    from orchestrator.commands.plan import round_pipeline
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import ConfigError

    def load(*overrides: str) -> FederatedJob:
        return load_config(FederatedJob, None, list(overrides), default_preset="simulate-demo")

    with pytest.raises(ConfigError, match="server_momentum"):
        load("strategy.name=fedavgm", "strategy.server_momentum=1.0")
    with pytest.raises(ConfigError, match="weighting"):
        load("strategy.name=scaffold", "strategy.weighting=capped")
    with pytest.raises(ConfigError, match="clip_relative"):
        load("strategy.name=scaffold", "strategy.clip_relative=true")
    plan = round_pipeline(load("strategy.name=scaffold"))
    assert any("SCAFFOLD" in line for line in plan["site"])
    assert any("delta_c" in line for line in plan["server"])
    plan = round_pipeline(load("strategy.name=fedavgm", "strategy.server_momentum=0.5"))
    assert any("v = 0.5 * v" in line for line in plan["server"])


def test_scaffold_is_refused_with_privacy_it_would_break():
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import ConfigError

    for extra in (["privacy.mode=local"], ["privacy.secure_aggregation=true"]):
        with pytest.raises(ConfigError, match="scaffold"):
            load_config(
                FederatedJob,
                None,
                ["strategy.name=scaffold", "strategy.weighting=uniform", *extra],
                default_preset="simulate-demo",
            )
