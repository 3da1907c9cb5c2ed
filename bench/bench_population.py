"""Round time vs population: 10 sites train and 10 evaluate per round, out of 100 ... 10,000.

    python bench/bench_population.py [--sites 100 1000 10000] [--rounds 4]
        [--full-eval-sites 100] [--nodes auto|flat|N] [--md bench/results/population.md]

Each federation runs exactly as ``fedray simulate`` runs it (:func:`orchestrator.federated.simulate.simulate`:
a ``flower-superlink --simulation`` and ``flwr run``; the simulated sites are Flower
SuperNodes on an embedded 2-CPU Ray), with ``federation.sites_per_round=10``,
``federation.eval_sites_per_round=10`` and ``federation.final_eval_all=false`` (visiting 10,000
sites at the end would dominate the measurement; the default ``true`` does that once per run).
The data is the bundled demo tweets repeated 4x (24,000 rows, IID partition, at most 10 rows per
site), so every site, whatever the population, trains 2 steps on <= 8 rows and evaluates its
<= 2 held-out rows: per-round work is the same; only the population changes.

``--nodes``: how many simulated SuperNodes the engine runs (``federation.simulation_nodes``):
``auto`` (the default: one per site up to 1,000 sites, a pool of 100 above), ``flat`` (one per
site, the behaviour before the pool) or a pool size.

``--full-eval-sites N`` adds, for each population <= N, the behaviour before sampled evaluation
(every site evaluates after every round) for comparison.

Per-round times are ``round_time_s`` of ``metrics.jsonl`` (inside the ServerApp: send, local
work, replies, aggregation, checkpoint); the median over rounds 2.. (round 1 absorbs the start
of the Ray actors). Start-up (SuperLink, Ray, the sites' registration) is reported apart.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(path: Path, copies: int = 4) -> int:
    from orchestrator.data.sources import DEMO_LABELLED, demo_path

    with open(demo_path(DEMO_LABELLED), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["topic", "label", "text"])
        w.writeheader()
        for _ in range(copies):
            w.writerows(rows)
    return copies * len(rows)


def run_one(
    sites: int, rounds: int, data: Path, root: Path, sampled_eval: bool, nodes: str = "auto"
) -> dict:
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.simulate import federation_config, simulate

    name = f"pop-{sites}-{'sampled' if sampled_eval else 'all'}-{nodes}"
    overrides = [
        f"data.paths=[{data}]",
        f"data.cache_dir={root / 'cache'}",
        f"run.dir={root / name}",
        "model.path=null",
        "data.tokenizer.path=null",
        "model.d_model=32",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.vocab_size=512",
        "task.max_length=24",
        "train.micro_batch_size=8",
        "finetune.local_steps=2",
        "partition.kind=iid",
        "partition.max_examples_per_site=10",
        f"federation.num_sites={sites}",
        f"federation.num_rounds={rounds}",
        "federation.sites_per_round=10",
        "federation.min_sites=5",
        "federation.eval_every=1",
        "federation.num_cpus=2",
    ]
    if sampled_eval:
        overrides += ["federation.eval_sites_per_round=10", "federation.final_eval_all=false"]
    if nodes != "auto":
        overrides.append(f"federation.simulation_nodes={sites if nodes == 'flat' else nodes}")
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    supernodes = federation_config(job)["num-supernodes"]
    t0, c0 = time.monotonic(), _cpu()
    result = simulate(job)
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    times = [r["round_time_s"] for r in result.rounds if r["round"] >= 1]
    evaluated = [sum("eval-loss" in s for s in r["sites"].values()) for r in result.rounds]
    return {
        "sites": sites,
        "eval": "10 sampled" if sampled_eval else "every site",
        "supernodes": supernodes,
        "rounds": rounds,
        "median_round_s": statistics.median(times[1:] or times),
        "round_times_s": times,
        "sites_evaluated_per_round": evaluated,
        "bytes_down_per_round": [r["bytes_down"] for r in result.rounds],
        "wall_s": round(wall, 1),
        "startup_s": round(wall - sum(times) - result.rounds[0]["round_time_s"], 1),
        "cpu_s_children": round(cpu, 1),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--full-eval-sites", type=int, default=100)
    p.add_argument("--nodes", default="auto", help="auto | flat | a pool size")
    p.add_argument("--md", type=Path, default=ROOT / "bench" / "results" / "population.md")
    a = p.parse_args()
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="fedray-pop-") as tmp:
        root = Path(tmp)
        n = make_data(root / "tweets-x4.csv")
        print(f"data: {n} rows")
        for sites in a.sites:
            for sampled in (True, False):
                if not sampled and sites > a.full_eval_sites:
                    continue
                r = run_one(sites, a.rounds, root / "tweets-x4.csv", root, sampled, a.nodes)
                print(json.dumps(r), flush=True)
                results.append(r)
    load = os.getloadavg()[0]
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f} at the end | {a.rounds} rounds, 10 sites train per round",
        "",
        "| sites | SuperNodes | evaluated per round | median round s | rounds 1.. s | start-up s "
        "| wall s | driver CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['sites']} | {r['supernodes']} | {r['eval']} | {r['median_round_s']:.2f} | "
            f"{', '.join(f'{t:.1f}' for t in r['round_times_s'])} | {r['startup_s']} | "
            f"{r['wall_s']} | {r['cpu_s_children']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    a.md.parent.mkdir(parents=True, exist_ok=True)
    with open(a.md, "a") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
