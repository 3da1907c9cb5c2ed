"""`fedray simulate` on a multi-node Ray cluster on one machine, run in its own interpreter by
test_sim_cluster.py:

    python -m tests.integration.sim_multinode OUT.json RUNS_DIR CACHE_DIR

A head node with no CPUs and two 1-CPU worker nodes (``ray.cluster_utils.Cluster``, as in
tests/integration/multinode.py). The same job runs twice as a user runs it, ``fedray simulate``
in a subprocess: on the cluster (``cluster.address``; each site needs a whole node's CPU, so
the two ClientApp actors land on different nodes) and on the embedded local Ray. The report
holds each run's exit code and output tail, the nodes the ClientApp actors ran on (Ray's state
API, served by the head's dashboard) and the final weights' digest per tensor. A third run on the
cluster loses a worker node (and the site actor on it) once round 1 is checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

JOB = [
    "federation.num_sites=4",
    "federation.num_rounds=2",
    "federation.min_sites=2",
    "federation.eval_every=2",
    "federation.cpus_per_site=1",
    "federation.num_cpus=2",  # the embedded run's Ray; a cluster brings its own CPUs
    "partition.kind=iid",
    "partition.max_examples_per_site=40",
    "finetune.local_steps=2",
    "train.micro_batch_size=8",
    "model.path=null",
    "model.d_model=32",
    "model.n_head=2",
    "model.n_layer=1",
    "data.tokenizer.path=null",
    "data.tokenizer.vocab_size=512",
    "task.max_length=24",
]


def simulate(run_dir: Path, cache: Path, *extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "simulate", *JOB,
         f"data.cache_dir={cache}", f"run.dir={run_dir}", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    out = done.stdout + done.stderr
    said = [line for line in out.splitlines() if line.startswith("simulation on the Ray cluster")]
    return {"rc": done.returncode, "out": out[-6000:], "cluster_line": said}


def digests(run_dir: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    weights = load_file(str(run_dir / "export" / "model.safetensors"))
    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in sorted(weights.items())}


def actor_nodes() -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "ClientAppActor")], timeout=30)
    return sorted({a.node_id for a in actors})


class NodeRemover(threading.Thread):
    """Removes one worker node (and the ClientApp actor on it) once round 1's checkpoint
    exists, i.e. while the later rounds run."""

    def __init__(self, cluster: Any, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.cluster, self.run_dir = cluster, run_dir
        self.removed: dict[str, Any] | None = None

    def run(self) -> None:
        mark = self.run_dir / "checkpoints" / "round-0001" / "state.json"
        deadline = time.monotonic() + 900
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if mark.exists():
            victim = max(self.cluster.worker_nodes, key=lambda n: n.node_id)  # each hosts a site
            rows = (self.run_dir / "metrics.jsonl").read_text().splitlines()
            self.cluster.remove_node(victim)
            self.removed = {"node_id": victim.node_id, "rounds_done": len(rows) - 1}


def main(out: Path, runs: Path, cache: Path) -> None:
    import ray

    from tests.integration.multinode import local_cluster

    report: dict[str, Any] = {}
    cluster = local_cluster(2)  # sites run on the worker nodes
    try:
        report["worker_nodes"] = sorted(n.node_id for n in cluster.worker_nodes)
        report["cluster"] = simulate(runs / "cluster", cache, f"cluster.address={cluster.address}")
        ray.init(address=cluster.address, log_to_driver=False)
        report["cluster"]["actor_nodes"] = actor_nodes()
        ray.shutdown()
        report["local"] = simulate(runs / "local", cache)
        # A node leaves mid-run: the site on it fails like a dropped site, the rest go on.
        remover = NodeRemover(cluster, runs / "node_loss")
        remover.start()
        report["node_loss"] = simulate(
            runs / "node_loss", cache, f"cluster.address={cluster.address}",
            "federation.num_rounds=4", "federation.eval_every=4",
        )  # fmt: skip
        remover.join(30)
        report["node_loss"]["removed"] = remover.removed
        if report["node_loss"]["rc"] == 0:
            rows = (runs / "node_loss" / "metrics.jsonl").read_text().splitlines()
            report["node_loss"]["rows"] = [json.loads(x) for x in rows]
        for name in ("cluster", "local"):
            if report[name]["rc"] == 0:
                report[name]["weights"] = digests(runs / name)
                rows = (runs / name / "metrics.jsonl").read_text().splitlines()
                report[name]["rounds"] = [json.loads(x)["round"] for x in rows]
    finally:
        out.write_text(json.dumps(report, indent=1))
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
