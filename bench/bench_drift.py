"""Drift correction on a non-IID split: final macro-F1, bytes and round time of FedAvg, FedAvgM
and SCAFFOLD, run in this process (LocalGrid: the same round loop and ClientApp as
``fedray simulate``, without Ray start-up).

    python bench/bench_drift.py [--strategies fedavg fedavgm scaffold] [--seeds 0]
        [--sites 4] [--rounds 6] [--local-steps 10] [--partition natural|dirichlet]
        [--alpha 0.1] [--max-examples 400] [--set KEY=VALUE ...] [--out bench/results/drift.json]

Small on purpose (the tiny ``simulate-demo`` model, ``--max-examples`` rows per site) so that a
grid runs in minutes on 2 cores; the quality benchmark at equal compute against the centralized
baseline is a separate, larger benchmark. Every setting but ``strategy.*`` is the same for all
strategies of a seed; the score is the last round's pooled macro-F1 over every site's held-out
rows, from ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = {
    "fedavg": ["strategy.name=fedavg"],
    "fedavgm": ["strategy.name=fedavgm", "strategy.server_momentum=0.9"],
    "scaffold": ["strategy.name=scaffold"],
}


def run_one(name: str, seed: int, args: argparse.Namespace, cache: Path) -> dict:
    from rich.console import Console

    from clients.client_app import app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import run_federated

    overrides = [
        *STRATEGIES[name],
        f"data.cache_dir={cache}",
        f"federation.num_sites={args.sites}",
        f"federation.num_rounds={args.rounds}",
        f"federation.seed={seed}",
        f"train.seed={seed}",
        f"finetune.local_steps={args.local_steps}",
        f"partition.kind={args.partition}",
        f"partition.alpha={args.alpha}",
        f"partition.max_examples_per_site={args.max_examples}",
        *args.set,
    ]
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    grid = LocalGrid(
        app, [{"partition-id": i, "num-partitions": args.sites} for i in range(args.sites)]
    )
    t0 = time.monotonic()
    quiet = RoundTable(job.task.kind, Console(file=io.StringIO()))  # the table is not the point
    with tempfile.TemporaryDirectory() as d:
        rounds = run_federated(grid, job, Path(d) / "run", table=quiet).rounds
    trained = [r for r in rounds if r["round"] > 0]
    return {
        "strategy": name,
        "seed": seed,
        "macro_f1": rounds[-1]["eval"]["macro-f1"],
        "accuracy": rounds[-1]["eval"]["accuracy"],
        "macro_f1_by_round": [r["eval"].get("macro-f1") for r in rounds],
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in trained),
        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in trained),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--partition", default="natural", choices=["natural", "dirichlet", "iid"])
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--max-examples", type=int, default=400)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="more key=value overrides for every run (model size...)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    args = p.parse_args()
    cache = Path(tempfile.gettempdir()) / "fedray-bench-cache"
    runs: list[dict] = []
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.strategies:
            runs.append(run_one(name, seed, args, cache))
            r = runs[-1]
            print(
                f"{name:9s} seed {seed}: macro-F1 {r['macro_f1']:.4f} accuracy {r['accuracy']:.4f} "
                f"up {r['bytes_up_per_round'] / 1e6:.2f} MB/round down "
                f"{r['bytes_down_per_round'] / 1e6:.2f} MB/round ({r['wall_s']} s)",
                flush=True,
            )
            # Written after every run: a killed benchmark keeps what it finished.
            args.out.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
