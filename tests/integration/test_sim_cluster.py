"""`fedray simulate cluster.address=...` on a head + 2 worker nodes (``ray.cluster_utils.Cluster``
on one machine, driven by tests/integration/sim_multinode.py in its own interpreter): the sites
run on both nodes, the federation's final model equals the embedded one-node run's, bit for
bit, for the same seed, and a worker node removed mid-run is survived."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("simcluster")
    ray_tmp = tempfile.mkdtemp(prefix="sc", dir="/tmp")  # short: Ray socket paths are bounded
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""}
    try:
        r = subprocess.run(
            [sys.executable, "-m", "tests.integration.sim_multinode", str(out / "report.json"),
             str(out / "runs"), str(cache_dir)],
            capture_output=True, text=True, env=env, timeout=1200,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads((out / "report.json").read_text())


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


def test_a_node_lost_mid_run_is_survived_like_a_dropped_site(report: dict[str, Any]) -> None:
    """Flower's engine fails the message of the site whose actor died (the round loop records
    it like a site that dropped out), drops the dead actor from its pool, and the other node's
    actor serves every later message: each round completes with the sites that answered."""
    run = report["node_loss"]
    assert run["rc"] == 0, run["out"]
    assert run["removed"] is not None and run["removed"]["rounds_done"] >= 1, run["removed"]
    rows = run["rows"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    after = rows[run["removed"]["rounds_done"] + 1 :]
    assert after and all(r["train"]["sites-accepted"] >= 2 for r in after), after
    assert all(not r["skipped"] for r in rows[1:])
