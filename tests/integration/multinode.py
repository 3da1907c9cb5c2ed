"""Multi-node pretraining on one machine, run in its own interpreter by test_multinode.py:

    python -m tests.integration.multinode OUT.json RUNS_DIR CACHE_DIR

A head node with no CPUs and three 1-CPU worker nodes (``ray.cluster_utils.Cluster``: separate
raylets on one machine, Ray's documented way to test multi-node code, in its "testing Ray
programs" guide; the module carries no API-stability annotation, so the behaviour used here is
pinned by test_multinode.py's assertions: each ``add_node`` is its own node with its own
resources, and ``remove_node`` kills that node's raylet and workers). Two runs of the same job,
2 workers x 1 CPU, so each worker needs a node of its own:

1. ``reference``: uninterrupted; the nodes hosting the training workers are recorded.
2. ``node_loss``: once a checkpoint exists, the node hosting a training worker is removed; with
   ``run.max_failures=1`` Ray Train restarts the group from that checkpoint on the two nodes left.

Its own process because the integration tier shares one embedded Ray (``ray_local``) per
session and a driver can join only one cluster. ``RAY_TMPDIR`` must point at a private directory:
``Cluster`` writes ``ray_current_cluster`` there (in /tmp/ray it would redirect other Ray users
on this machine).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

STEPS = 24
CHECKPOINT_EVERY = 8


def job(root: Path, cache: Path, name: str, *extra: str) -> Any:
    from tests.integration.pretrain_jobs import tiny_job

    return tiny_job(
        root,
        cache,
        name,
        "cluster.address=auto",  # informational: the driver is already connected
        "model.d_model=128",  # slow enough (tens of ms per step) to remove a node mid-run
        "data.block_size=64",
        *extra,
        steps=STEPS,
        micro_batch_size=4,
        vocab_size=512,
        checkpoint_every=CHECKPOINT_EVERY,
    )


def train_worker_nodes() -> list[str]:
    """Node ids of the alive Ray Train worker actors (state API, served by the head's dashboard)."""
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], timeout=10
    )
    return sorted(a.node_id for a in actors)


def last_step(run_dir: Path) -> int:
    from orchestrator.runs import read_metrics

    steps = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    return max(steps, default=0)


class Watcher(threading.Thread):
    """Records where the training workers run; optionally removes one of their nodes once a
    complete checkpoint exists (the point Ray Train can restart from)."""

    def __init__(self, cluster: Any, run_dir: Path, remove: bool) -> None:
        super().__init__(daemon=True)
        self.cluster, self.run_dir, self.remove = cluster, run_dir, remove
        self.placements: list[list[str]] = []
        self.removed: dict[str, Any] | None = None
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        from orchestrator.pretrain.checkpoint import latest_complete

        try:
            while not self.stop.is_set():
                nodes = train_worker_nodes()
                if len(nodes) == 2 and nodes not in self.placements:
                    self.placements.append(nodes)
                info = latest_complete(self.run_dir) if self.run_dir.exists() else None
                if self.remove and self.removed is None and info is not None and len(nodes) == 2:
                    victim = next(n for n in self.cluster.worker_nodes if n.node_id in nodes)
                    step = last_step(self.run_dir)
                    self.cluster.remove_node(victim)
                    self.removed = {
                        "node_id": victim.node_id,
                        "checkpoint_step": info.step,
                        "step_seen": step,
                    }
                time.sleep(0.1)
        except Exception as e:  # reported to the test, never swallowed
            self.error = repr(e)


def local_cluster(workers: int) -> Any:
    """A head with no CPUs (nothing runs there, as on a real cluster) and its dashboard, plus
    ``workers`` 1-CPU nodes, all on this machine. Ray Train's placement-group cleaner asks the
    state API with no address (see orchestrator.cluster.local_ray): every process of this
    cluster is pointed at its own dashboard."""
    from ray.cluster_utils import Cluster

    from orchestrator.processes.network import free_port

    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        },
    )
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def run_driver(module: str, out: Path, cache: Path, timeout: float) -> dict[str, Any]:
    """``python -m MODULE OUT.json RUNS_DIR CACHE_DIR`` in its own interpreter with a private,
    short ``RAY_TMPDIR`` (Ray's socket paths are bounded); its report."""
    import shutil
    import subprocess
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="mn", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""}
    try:
        r = subprocess.run(
            [sys.executable, "-m", module, str(out / "report.json"), str(out / "runs"),
             str(cache)],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads((out / "report.json").read_text())


def main(out: Path, runs: Path, cache: Path) -> None:
    import ray

    from orchestrator.pretrain import pretrain

    report: dict[str, Any] = {}
    cluster = local_cluster(3)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        report["worker_nodes"] = sorted(n.node_id for n in cluster.worker_nodes)
        report["head_node"] = cluster.head_node.node_id
        for name, remove, extra in [
            ("reference", False, ()),
            ("node_loss", True, ("run.max_failures=1",)),
        ]:
            j = job(runs, cache, name, *extra)
            watcher = Watcher(cluster, runs / name, remove)
            watcher.start()
            t0 = time.monotonic()
            result = pretrain(j)
            watcher.stop.set()
            watcher.join(30)
            report[name] = {
                "final_step": result.final_step,
                "losses": {m["step"]: m["loss"] for m in result.metrics if "loss" in m},
                "events": [m["event"] for m in result.metrics if "event" in m],
                "placements": watcher.placements,
                "removed": watcher.removed,
                "watcher_error": watcher.error,
                "wall_s": round(time.monotonic() - t0, 1),
            }
    finally:
        out.write_text(json.dumps(report, indent=1))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
