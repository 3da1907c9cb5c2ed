"""One of five sites scales its update x100 (a simulated attacker, acting at the site through the
real ClientApp): FedAvg collapses, the robust rules stay near the clean run.

The federation runs in this process on ``LocalGrid`` (the same ServerApp round loop and ClientApp
as ``fedray simulate``, without Ray start-up), so five full runs fit the integration tier."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from clients.client_app import app as client_app
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import load_config
from orchestrator.federated.local_grid import LocalGrid
from orchestrator.federated.report import RoundTable
from orchestrator.federated.rounds import run_federated

pytestmark = pytest.mark.integration

SITES = 5
RUNS = {
    "clean": ["strategy.name=fedavg", "attack.kind=none"],
    "fedavg": ["strategy.name=fedavg"],
    "median": ["strategy.name=median"],
    "trimmed_mean": ["strategy.name=trimmed_mean", "strategy.trim_fraction=0.2"],
    "centered_clip": ["strategy.name=centered_clip", "strategy.clip_radius=1.0"],
}


def run(name: str, root: Path, cache_dir: Path) -> list[dict]:
    job = load_config(
        FederatedJob,
        None,
        [
            f"federation.num_sites={SITES}",
            "federation.num_rounds=3",
            "federation.min_sites=1",
            "partition.kind=iid",
            "partition.max_examples_per_site=200",
            "finetune.local_steps=8",
            "attack.kind=scale",
            "attack.sites=[2]",
            "attack.scale=100",
            f"data.cache_dir={cache_dir}",
            f"run.dir={root / name}",
            *RUNS[name],
        ],
        "simulate-demo",
    )
    grid = LocalGrid(
        client_app, [{"partition-id": i, "num-partitions": SITES} for i in range(SITES)]
    )
    table = RoundTable(job.task.kind, Console(file=io.StringIO()))
    run_federated(grid, job, root / name, table=table)
    return [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, list[dict]]:
    root = tmp_path_factory.mktemp("attack")
    return {name: run(name, root, cache_dir) for name in RUNS}


def accuracy(rows: list[dict]) -> float:
    return rows[-1]["eval"]["accuracy"]


def test_fedavg_collapses_under_a_scaled_update(results):
    clean, attacked = accuracy(results["clean"]), accuracy(results["fedavg"])
    assert clean > results["clean"][0]["eval"]["accuracy"] + 0.1  # the clean run learns
    assert attacked < clean - 0.15, (clean, attacked)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "centered_clip"])
def test_robust_rules_stay_near_the_clean_run(results, rule):
    clean, robust = accuracy(results["clean"]), accuracy(results[rule])
    assert robust > clean - 0.08, (rule, clean, robust)


def test_attackers_are_recorded_for_analysis_and_flagged_by_the_rule(results):
    for name in ("fedavg", "median", "trimmed_mean", "centered_clip"):
        rec = results[name][1]
        assert rec["attack"] == {"kind": "scale", "sites": ["site-2"]}
    assert "attack" not in results["clean"][1]
    # Trimmed mean names site-2 among the trimmed; centered clipping clips it.
    assert "trimmed" in results["trimmed_mean"][1]["sites"]["site-2"]["aggregation"]
    assert "clipped" in results["centered_clip"][1]["sites"]["site-2"]["aggregation"]
