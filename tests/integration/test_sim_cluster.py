"""`fedray simulate cluster.address=...` on a head + 2 worker nodes (``ray.cluster_utils.Cluster``
on one machine, driven by tests/integration/sim_multinode.py in its own interpreter): the sites
run on both nodes, the federation's final model equals the embedded one-node run's, bit for
bit, for the same seed; and what a worker node lost mid-run does to the rounds after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.multinode import run_driver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("simcluster")
    return run_driver("tests.integration.sim_multinode", out, cache_dir, timeout=1200)


def test_sites_run_on_more_than_one_node(report: dict[str, Any]) -> None:
    run = report["cluster"]
    assert run["rc"] == 0, run["out"]
    assert len(run["cluster_line"]) == 1, run["out"]
    assert run["cluster_line"][0].endswith(
        "3 node(s), 2 site(s) at once"
    )  # the head has no CPU, run["cluster_line"]
    assert run["rounds"] == [0, 1, 2]
    assert len(run["actor_nodes"]) == 2, run["actor_nodes"]
    assert set(run["actor_nodes"]) <= set(report["worker_nodes"])  # never on the 0-CPU head


def test_the_cluster_run_equals_the_one_node_run_bit_for_bit(report: dict[str, Any]) -> None:
    assert report["local"]["rc"] == 0, report["local"]["out"]
    assert report["cluster"]["weights"] == report["local"]["weights"]


def test_a_node_lost_mid_run_fails_its_sites_and_the_run_still_finishes(
    report: dict[str, Any],
) -> None:
    """What happens today (Flower 1.41's engine), pinned so a change shows: the run finishes and
    every round is recorded, but the engine keeps sending messages to the ClientApp actor that
    died with its node, so in every later round the sites routed to it fail (each recorded
    with the ActorDiedError) and a round with fewer than ``min_sites`` answers is skipped, not
    crashed. docs/federated.md says so and how to go on (re-run: it resumes from the last
    checkpoint on the nodes left)."""
    run = report["node_loss"]
    assert run["rc"] == 0, run["out"]
    assert run["removed"] is not None and run["removed"]["rounds_done"] >= 1, run["removed"]
    rows = run["rows"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    done = run["removed"]["rounds_done"]
    for r in rows[1 : done + 1]:  # before the loss: every site answered
        assert r["train"]["sites-accepted"] == 4, r
    after = rows[done + 1 :]
    assert after, rows
    for r in after:
        errors = [v.get("rejected", "") for v in r["sites"].values()]
        assert any("ActorDiedError" in e for e in errors), r["sites"]
