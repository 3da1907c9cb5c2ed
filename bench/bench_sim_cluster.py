"""What running ``fedray simulate`` on a Ray cluster costs per round, against its embedded Ray.

    python bench/bench_sim_cluster.py [--sites 4] [--rounds 4] [--repeats 3]
        [--out bench/results/sim_cluster]

The same job both ways, as a user runs it (``fedray simulate`` in a subprocess): the demo
federation (``simulate-demo``: the bundled model, tokenizer and tweets split by topic, same
seeds), rows capped so a round takes seconds, every round evaluated (``eval_every=1``) so that
all rounds do the same work.

- ``local``: the embedded Ray, 2 CPUs (``federation.num_cpus=2``), the default;
- ``cluster``: ``cluster.address=`` a ``ray.cluster_utils.Cluster`` on this machine: a head
  with no CPUs (nothing runs there, as on a real cluster) and 2 worker nodes of 1 CPU each, so
  the same 2 CPUs in all and each site's actor on a worker node. The cluster is started once
  (its own start-up is reported apart: a user's cluster is already running) and the runs
  alternate local, cluster, local, ... (``--first cluster``: cluster, local, ...; on a shared
  machine whose load drifts, run both orders)

Per run: ``round_s``, the median ``round_time_s`` of rounds >= 1 (metrics.jsonl, measured in
the ServerApp: train + evaluate at every site); ``round0_s``, round 0 (every ClientApp actor
starts and imports torch, then the starting model is evaluated); ``startup_s``, from the command
to the round loop (CLI, checks, on a cluster the per-node storage probes, SuperLink,
``flwr run``, Ray start or join, setup); ``teardown_s`` (export, stop); the peak RSS of each
ClientApp actor process (what one site needs on a node; RSS includes the shared library pages
of torch) and of ``flwr-simulation`` (the ServerApp: what the driver's node needs). Processes are
sampled among this script's descendants only (other Ray users on the machine are not counted).
Writes ``OUT/runs.json`` (every run and the medians) and each run's console output
``OUT/<mode>-<i>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_S = 0.25


def job_args(sites: int, rounds: int) -> list[str]:
    return [
        "simulate-demo",
        f"federation.num_sites={sites}",
        f"federation.num_rounds={rounds}",
        "federation.min_sites=2",
        "federation.eval_every=1",
        "federation.cpus_per_site=1",
        "federation.num_cpus=2",  # the embedded Ray's CPUs; a cluster brings its own
        "partition.max_examples_per_site=300",
        "logging.tensorboard=false",
    ]


class Sampler(threading.Thread):
    """Polls this process's descendants: peak RSS per ClientApp actor and of flwr-simulation,
    and the time each metrics.jsonl line appears."""

    def __init__(self, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.metrics = metrics
        self.actors: dict[int, int] = {}
        self.server = 0
        self.lines: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(SAMPLE_S):
            for p in me.children(recursive=True):
                try:
                    cmd = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if cmd.startswith("ray::ClientAppActor"):
                    self.actors[p.pid] = max(self.actors.get(p.pid, 0), rss)
                elif "flwr-simulation" in cmd:
                    self.server = max(self.server, rss)
            if self.metrics.is_file():
                n = len(self.metrics.read_text().splitlines())
                self.lines += [time.monotonic()] * (n - len(self.lines))


def run_once(mode: str, i: int, args: argparse.Namespace, address: str | None) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bsc-{mode}-", dir=args.runs))
    argv = [sys.executable, "-m", "orchestrator.cli", "simulate",
            *job_args(args.sites, args.rounds), f"run.dir={run_dir}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        argv.append(f"cluster.address={address}")
    else:  # the embedded Ray must not see the test cluster's dashboard
        env.pop("RAY_API_SERVER_ADDRESS", None)
    sampler = Sampler(run_dir / "metrics.jsonl")
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    sampler.start()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=args.timeout)
    t_end = time.monotonic()
    sampler.stop.set()
    sampler.join()
    (args.out / f"{mode}-{i}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run {i} failed; see {args.out / f'{mode}-{i}.log'}")
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["round_time_s"] for r in recs if r["round"] >= 1]
    first = sampler.lines[0] if sampler.lines else t_end
    return {
        "mode": mode,
        "repeat": i,
        "wall_s": round(t_end - t0, 2),
        "startup_s": round(first - recs[0]["round_time_s"] - t0, 2),
        "round0_s": recs[0]["round_time_s"],
        "rounds_s": rounds,
        "round_s": statistics.median(rounds),
        "teardown_s": round(t_end - (sampler.lines[-1] if sampler.lines else t_end), 2),
        "actor_rss_mib": sorted(round(v / 2**20) for v in sampler.actors.values()),
        "server_rss_mib": round(sampler.server / 2**20),
        "final_accuracy": recs[-1]["eval"].get("accuracy"),
        "load_1min_at_start": round(load, 2),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("local", "cluster"):
        rs = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            key: round(statistics.median(r[key] for r in rs), 2)
            for key in ("round_s", "round0_s", "startup_s", "teardown_s", "wall_s")
        }
        out[mode]["actor_rss_mib_max"] = max(max(r["actor_rss_mib"], default=0) for r in rs)
        out[mode]["server_rss_mib_max"] = max(r["server_rss_mib"] for r in rs)
    out["ratio"] = {
        "round_s": round(out["cluster"]["round_s"] / out["local"]["round_s"], 3),
        "startup_s": round(out["cluster"]["startup_s"] / out["local"]["startup_s"], 3),
    }
    return out


def start_cluster() -> tuple[Any, float]:
    from tests.integration.multinode import local_cluster

    t0 = time.monotonic()
    cluster = local_cluster(2)
    return cluster, round(time.monotonic() - t0, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument(
        "--first", choices=("local", "cluster"), default="local", help="which mode opens each pair"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim_cluster")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # A private, short Ray temp dir: the cluster's ray_current_cluster must not land in /tmp/ray
    # (it would redirect other Ray users here), and socket paths are bounded.
    ray_tmp = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="bscr", dir="/tmp")
    args.runs = Path(tempfile.mkdtemp(prefix="bsc-runs-", dir="/tmp"))
    cluster, cluster_start_s = start_cluster()
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.repeats):
            for mode in sorted(("local", "cluster"), key=lambda m: m != args.first):
                runs.append(run_once(mode, i, args, cluster.address if mode == "cluster" else None))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        cluster.shutdown()
        shutil.rmtree(args.runs, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "argv": sys.argv,
        "cpus": os.cpu_count(),
        "cluster_start_s": cluster_start_s,
        "summary": summarize(runs),
        "runs": runs,
    }
    (args.out / "runs.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    print(f"cluster start (head + 2 worker nodes): {cluster_start_s} s")


if __name__ == "__main__":
    main()
