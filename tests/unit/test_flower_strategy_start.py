"""FedYogi and FedAdagrad under Flower's stock ``Strategy.start``, against values worked by hand.

A real ``flwr.serverapp.ServerApp`` runs ``strategy.start`` for 2 rounds on an in-process grid
(``LocalGrid``) with 2 fake sites. The sites ignore the model they receive and reply with fixed
updates, so every number below follows from the update table alone (cf. Flower's
``fedavgm_test.py``). No Ray, no training.

The sites hold different amounts of data, so the weighting by ``num-examples`` shows:

    site A (node 1): num-examples 1        site B (node 2): num-examples 3

    round   A's update   B's update   weighted mean d = (1*A + 3*B)/4   (unweighted mean)
      1     [ 9, -36]    [1, -4]      [3, -12]                          ([5, -20])
      2     [10,  11]    [2,  3]      [4,   5]                          ([6,   7])

Server optimizer (strategies/fedopt.py; Reddi et al. 2021, no bias correction), m and v from 0:

    m <- b1 m + (1 - b1) d
    fedyogi:    v <- v - (1 - b2) d^2 sign(v - d^2)
    fedadagrad: v <- v + d^2
    w <- w + eta m / (sqrt(v) + tau)

with eta = 1, b1 = 0.5, b2 = 0.75, tau = 1 and the trainable tensor w = [1, 2] at the start
(a second tensor, ``frozen`` = [7], is not trained: it must come back unchanged).

First moment, the same for both:
    m1 = 0.5 * [3, -12]          = [1.5, -6]
    m2 = 0.5 * m1 + 0.5 * [4, 5] = [0.75 + 2, -3 + 2.5] = [2.75, -0.5]

FedYogi, d^2 = [9, 144] then [16, 25]:
    v1 = 0 - 0.25 * [9, 144] * sign(0 - [9, 144])        = [2.25, 36]     sqrt [1.5, 6]
    v2 = v1 - 0.25 * [16, 25] * sign([2.25 - 16, 36 - 25])
       = [2.25 + 4, 36 - 6.25]                           = [6.25, 29.75]  sqrt [2.5, 5.4543561]
       (both branches of the sign: v grows on the first coordinate, shrinks on the second)
    w1 = [1 + 1.5 / 2.5, 2 - 6 / 7]                      = [1.6, 1.1428571]   (= [8/5, 8/7])
    w2 = [1.6 + 2.75 / 3.5, 8/7 - 0.5 / 6.4543561]       = [2.3857143, 1.0653901]

FedAdagrad:
    v1 = [9, 144]                                        sqrt [3, 12]
    v2 = [9 + 16, 144 + 25] = [25, 169]                  sqrt [5, 13]
    w1 = [1 + 1.5 / 4, 2 - 6 / 13]                       = [1.375, 1.5384615]
    w2 = [1.375 + 2.75 / 6, 1.5384615 - 0.5 / 14]        = [1.8333333, 1.5027473]

Swapping the two rules swaps the two tables; FedAdam's v2 = 0.75 v1 + 0.25 d^2 = [5.6875, 33.25]
would give yet another w2 ([2.4124442, 1.0689613]), so each test pins its own rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.contract.messages import SERVER_ROUND, evaluate_reply, train_reply
from orchestrator.federated.local_grid import LocalGrid
from strategies import FedAdagrad, FedYogi
from strategies.base import DeltaStrategy
from strategies.fold import FoldSettings
from strategies.sampling import Sampling

NUM_EXAMPLES = {1: 1, 2: 3}  # node id -> num-examples (site A, site B)
UPDATES = {  # (node id, round) -> the update that site sends for "w"
    (1, 1): [9.0, -36.0],
    (2, 1): [1.0, -4.0],
    (1, 2): [10.0, 11.0],
    (2, 2): [2.0, 3.0],
}
TRAIN_LOSS = {1: 4.0, 2: 2.0}  # weighted: (1*4 + 3*2) / 4 = 2.5
EVAL_LOSS = {1: 2.0, 2: 1.0}  # weighted: (1*2 + 3*1) / 4 = 1.25
W0 = [1.0, 2.0]
FROZEN = [7.0]
HYPER = dict(eta=1.0, beta1=0.5, beta2=0.75, tau=1.0)


@dataclass(frozen=True)
class HandWorked:
    w1: list[float]
    w2: list[float]
    m2: list[float]
    v2: list[float]


EXPECTED = {
    "fedyogi": HandWorked(
        w1=[8 / 5, 8 / 7],
        w2=[8 / 5 + 2.75 / 3.5, 8 / 7 - 0.5 / (np.sqrt(29.75) + 1)],
        m2=[2.75, -0.5],
        v2=[6.25, 29.75],
    ),
    "fedadagrad": HandWorked(
        w1=[1 + 1.5 / 4, 2 - 6 / 13],
        w2=[1 + 1.5 / 4 + 2.75 / 6, 2 - 6 / 13 - 0.5 / 14],
        m2=[2.75, -0.5],
        v2=[25.0, 169.0],
    ),
}


def fixed_update_sites(received: dict[tuple[int, int], dict[str, np.ndarray]]) -> ClientApp:
    """A ClientApp whose sites reply with the fixed table above and record what they received."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node, rnd = context.node_id, int(msg.content["config"][SERVER_ROUND])
        received[(node, rnd)] = {k: v.copy() for k, v in to_numpy(msg.content["arrays"]).items()}
        update = {"w": np.array(UPDATES[(node, rnd)], np.float32)}
        metrics = {"num-examples": NUM_EXAMPLES[node], "train-loss": TRAIN_LOSS[node]}
        return train_reply(msg, update, metrics, site=f"site-{node}")

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = context.node_id
        metrics = {"num-examples": NUM_EXAMPLES[node], "eval-loss": EVAL_LOSS[node]}
        return evaluate_reply(msg, metrics, site=f"site-{node}")

    return app


def make_strategy(name: str) -> DeltaStrategy:
    """The settings ``strategies.build_strategy`` builds from a config, given directly."""
    cls = {"fedyogi": FedYogi, "fedadagrad": FedAdagrad}[name]
    return cls(
        beta1=HYPER["beta1"],
        beta2=HYPER["beta2"],
        tau=HYPER["tau"],
        eta=HYPER["eta"],
        sampling=Sampling(
            sites_per_round=None,
            fraction=1.0,
            min_sites=2,
            min_available_sites=2,
            seed=0,
            wait_for_sites_s=10.0,
            rejoin_wait_s=0.0,
        ),
        fold=FoldSettings(accumulate="float64"),
        update_keys=["w"],
    )


def run_two_rounds(strategy: DeltaStrategy, grid: Grid) -> Any:
    """The stock ServerApp body: initial arrays, then ``Strategy.start``."""
    app = ServerApp()
    results: list[Any] = []

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = from_numpy(
            {"w": np.array(W0, np.float32), "frozen": np.array(FROZEN, np.float32)}
        )
        results.append(
            strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=2,
                timeout=30,
                train_config=ConfigRecord({"local-steps": 1}),
                evaluate_config=ConfigRecord({}),
            )
        )

    app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    (result,) = results
    return result


@pytest.mark.parametrize("name", ["fedyogi", "fedadagrad"])
def test_two_rounds_under_strategy_start_match_the_hand_worked_values(name: str) -> None:
    received: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    grid = LocalGrid(fixed_update_sites(received), [{}, {}])
    strategy = make_strategy(name)
    result = run_two_rounds(strategy, grid)
    want = EXPECTED[name]

    # Both sites trained in both rounds; round 2 was sent the model that round 1 produced.
    assert sorted(received) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for node in (1, 2):
        np.testing.assert_array_equal(received[(node, 1)]["w"], np.array(W0, np.float32))
        np.testing.assert_allclose(received[(node, 2)]["w"], want.w1, rtol=1e-6)

    final = to_numpy(result.arrays)
    assert final["w"].dtype == np.float32
    np.testing.assert_allclose(final["w"], want.w2, rtol=1e-6)
    np.testing.assert_array_equal(final["frozen"], np.array(FROZEN, np.float32))

    # The server optimizer's state after round 2 (what a checkpoint would carry): exact, since
    # every intermediate value is a dyadic fraction.
    state = strategy.state_arrays()
    np.testing.assert_array_equal(state["m.w"], np.array(want.m2, np.float32))
    np.testing.assert_array_equal(state["v.w"], np.array(want.v2, np.float32))
    assert set(state) == {"m.w", "v.w"}  # no moments for the frozen tensor

    for rnd in (1, 2):
        train = result.train_metrics_clientapp[rnd]
        assert train["sites-accepted"] == 2 and train["sites-rejected"] == 0
        assert train["train-loss"] == pytest.approx(2.5)
        ev = result.evaluate_metrics_clientapp[rnd]
        assert ev["eval-loss"] == pytest.approx(1.25) and ev["num-examples"] == 4
