"""Multi-node on one machine (head + 3 worker nodes, ``ray.cluster_utils.Cluster``), driven by
tests/integration/multinode.py in its own interpreter: workers on different nodes train, and a
node removed mid-run costs a restart from the last complete checkpoint, not the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.multinode import CHECKPOINT_EVERY, STEPS, run_driver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("multinode")
    return run_driver("tests.integration.multinode", out, cache_dir, timeout=400)


def test_workers_on_different_nodes_train(report: dict[str, Any]):
    ref = report["reference"]
    assert ref["watcher_error"] is None
    # What the test relies on from ray.cluster_utils: three separate worker nodes besides the head.
    assert (
        len(set(report["worker_nodes"])) == 3 and report["head_node"] not in report["worker_nodes"]
    )
    assert ref["final_step"] == STEPS
    assert ref["placements"], "never saw the two training workers alive"
    for nodes in ref["placements"]:
        assert len(set(nodes)) == 2, nodes  # one worker per node: 1-CPU nodes, 1-CPU workers
        assert set(nodes) <= set(report["worker_nodes"]) and report["head_node"] not in nodes
    losses = ref["losses"]
    assert losses[str(STEPS)] < losses["1"]


def test_node_loss_restarts_from_checkpoint_with_the_same_result(report: dict[str, Any]):
    ref, lost = report["reference"], report["node_loss"]
    assert lost["watcher_error"] is None
    removed = lost["removed"]
    assert removed is not None, "no node was removed"
    assert removed["checkpoint_step"] % CHECKPOINT_EVERY == 0
    assert removed["checkpoint_step"] < STEPS, "the node was removed after training ended"
    # Ray Train restarted from the checkpoint, on nodes that are still there.
    resumed = [e for e in lost["events"] if "resumed from checkpoint" in e]
    assert resumed, lost["events"]
    later = lost["placements"][-1]
    assert removed["node_id"] not in later and len(set(later)) == 2
    assert lost["final_step"] == ref["final_step"] == STEPS
    assert lost["losses"][str(STEPS)] == pytest.approx(ref["losses"][str(STEPS)], rel=1e-5)
