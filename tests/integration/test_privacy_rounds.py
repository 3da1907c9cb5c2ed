"""The privacy ledger in the real round loop (in-process LocalGrid, the real ClientApp).

Central DP: epsilon in every round record equals the accountant's value for the rounds run, a
resumed run continues the ledger exactly, and the budget stops the run before the round that
would exceed it, with its export. Local DP: replies carry no training metrics, epsilon is the
worst site's.
"""

from __future__ import annotations

import json

import pytest

from clients.client_app import app as client_app
from orchestrator.federated import checkpoint
from orchestrator.federated.ledger import central_epsilon, local_epsilon, projected_epsilon
from orchestrator.federated.local_grid import LocalGrid
from orchestrator.federated.report import RoundTable
from orchestrator.federated.rounds import FederatedRun
from orchestrator.federated.setup import prepare
from tests.unit.test_federated_rounds import job

pytestmark = pytest.mark.integration


def grid(n: int) -> LocalGrid:
    return LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_central_ledger_resumes_exactly_and_the_budget_stops_the_run(cache_dir, tmp_path):
    dp = [
        "federation.num_sites=3",
        "federation.sites_per_round=2",
        "strategy.weighting=uniform",
        "privacy.mode=central",
        "privacy.noise_multiplier=3.0",
        "privacy.clip_norm=0.5",
        "privacy.delta=1e-3",
    ]
    base = job(cache_dir, *dp, "federation.num_rounds=1")
    two, three = (projected_epsilon(base.privacy, r, 2, 3) for r in (2, 3))
    budget = f"privacy.target_epsilon={(two + three) / 2}"  # rounds 1-2 fit, round 3 does not
    first = job(cache_dir, *dp, "federation.num_rounds=1", budget)
    setup = prepare(first)
    run_dir = tmp_path / "run"
    FederatedRun(grid(3), first, run_dir, setup, RoundTable(first.task.kind, privacy=True)).run()
    assert [r.get("epsilon") for r in rows(run_dir)] == [None, central_epsilon(3.0, [(2, 3)], 1e-3)]

    # Resume with more rounds (allowed): the ledger continues from the checkpoint.
    more = job(cache_dir, *dp, "federation.num_rounds=5", budget)
    resumed = FederatedRun(grid(3), more, run_dir, setup, RoundTable(more.task.kind, privacy=True))
    result = resumed.run()
    recs = rows(run_dir)
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert recs[2]["epsilon"] == central_epsilon(3.0, [(2, 3)] * 2, 1e-3) == pytest.approx(two)
    assert recs[2]["privacy"]["rounds_charged"] == 2
    # What a user picks the clip from: every site's update norm (server-side, before the
    # clip) and how many the round's bound clipped.
    sites = recs[2]["sites"].values()
    norms = [s["update-norm"] for s in sites if "update-norm" in s]
    assert len(norms) == 2 and all(n > 0 for n in norms)
    assert recs[2]["privacy"]["clip"] == 0.5
    assert recs[2]["privacy"]["clipped"] == sum(n > 0.5 for n in norms)
    assert "round 3 would take epsilon" in result.stop_reason
    assert "target_epsilon" in result.stop_reason
    assert (result.export_dir / "config.json").is_file()  # it ended cleanly, with its export
    state = checkpoint.latest(run_dir).state
    assert [r["round"] for r in state["privacy_ledger"]["rounds"]] == [1, 2]
    assert "central_dp" in state["strategy"]


def test_local_dp_replies_carry_no_data_metrics_and_epsilon_is_the_worst_sites(cache_dir, tmp_path):
    j = job(
        cache_dir,
        "federation.num_sites=2",
        "federation.num_rounds=1",
        "strategy.weighting=uniform",
        "privacy.mode=local",
        "privacy.noise_multiplier=2.0",
        "privacy.delta=1e-3",
    )
    run_dir = tmp_path / "run"
    FederatedRun(grid(2), j, run_dir, prepare(j), RoundTable(j.task.kind, privacy=True)).run()
    rec = rows(run_dir)[1]
    assert rec["epsilon"] == local_epsilon(2.0, 1, 1e-3)
    assert rec["train"]["sites-accepted"] == 2
    for site in rec["sites"].values():
        assert "train-loss" not in site and site.get("num-examples", 1) == 1
