"""Tuning a private federation: ``fedray tune`` over the clip and the server step of central DP at
epsilon 8 per trial, against the same federation without DP (its server step tuned too).

    python bench/bench_tune_privacy.py [--sites 500] [--per-round 50] [--rounds 20]
        [--trials 6] [--epsilon 8] [--nodp-server-lrs 1.0 1.7 3.0] [--eval-seeds 1]
        [--part both|dp|nodp] [--out bench/results/tune_privacy]

The job is ``bench/bench_privacy.py``'s K = 50 setting (BENCHMARKS.md, "Privacy"): the bundled
pretrained demo base with LoRA r=8 on ``c_attn`` + the head, ``--sites`` sites with
Dirichlet(1.0) label mixes, ``--per-round`` sampled per round, 4 local steps, FedAvg with uniform
weights, delta 1e-4, scored on every site's held-out rows at the last round only
(``federation.eval_every`` = rounds: a per-round evaluation of 500 sites would cost more than
the training). DP search: ``privacy.clip_norm`` log-uniform [0.05, 1] and
``strategy.server_lr`` log-uniform [0.5, 5], the noise multiplier calibrated before the search
so that each trial's ledger ends at <= ``--epsilon`` (bench_privacy's ``calibrate``); random
search, FIFO (one evaluation per trial leaves ASHA nothing to compare). No-DP: a grid over
``strategy.server_lr``. Each search runs on seed 0 and re-runs its best config on
``--eval-seeds`` (held out). The DP search's own spend (every trial and re-run composed) is
in ``dp.json``. Every trial's rows, config and metrics are kept under ``<out>/{dp,nodp}/``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DELTA = 1e-4


def job_overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    """bench_privacy.py's job (its run_one overrides for these options)."""
    return [
        f"federation.num_sites={args.sites}",
        f"federation.sites_per_round={args.per_round}",
        f"federation.num_rounds={args.rounds}",
        f"federation.eval_every={args.rounds}",
        "federation.min_sites=1",
        "partition.kind=dirichlet",
        "partition.alpha=1.0",
        "finetune.local_steps=4",
        "finetune.mode=lora",
        "strategy.name=fedavg",
        "strategy.weighting=uniform",
        f"privacy.delta={DELTA}",
        f"data.cache_dir={cache}",
        "cluster.num_cpus=2",
    ]


def search(name: str, tune: dict, extra: list[str], args: argparse.Namespace, work: Path) -> dict:
    from bench_tune_quality import keep
    from rich.console import Console

    from orchestrator.tune.runner import run_tune
    from orchestrator.tune.setup import load_tune

    preset = ROOT / "orchestrator" / "config" / "presets" / "simulate-demo.yaml"
    cfg = {**yaml.safe_load(preset.read_text()), "tune": {**tune, "seed": 0}}
    cfg["tune"]["eval_seeds"] = args.eval_seeds
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    over = [*job_overrides(args, work / "cache"), *extra, f"run.dir={work / name}"]
    setup = load_tune(str(work / f"{name}.yaml"), over)
    t0 = time.monotonic()
    res = run_tune(setup, work / name, console=Console(file=io.StringIO()))
    keep(work / name, args.out / name)
    s = res.summary
    out = {
        "best_seed0": s["best"]["metric"],
        "best_config": s["best"]["config"],
        "best_epsilon": s["best"]["epsilon"],
        "trials": [(r.config, r.metric, r.epsilon) for r in res.rows],
        "eval_seeds": s["eval_seeds"],
        "privacy_spent": s["privacy"],
        "wall_s": round(time.monotonic() - t0, 1),
        "overrides": over,
    }
    (args.out / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(name, json.dumps({k: v for k, v in out.items() if k != "overrides"}), flush=True)
    return out


def main() -> None:
    from bench_privacy import calibrate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--per-round", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--nodp-server-lrs", type=float, nargs="+", default=[1.0, 1.7, 3.0])
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[1])
    p.add_argument("--part", choices=["both", "dp", "nodp"], default="both")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tune_privacy")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    z = round(calibrate("central", args.epsilon, args.rounds, args.per_round, args.sites), 3)
    print(f"noise multiplier {z} for epsilon {args.epsilon} after {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedray-bench-tunedp-") as tmp:
        work = Path(tmp)
        if args.part in ("both", "nodp"):
            grid = {"space": {"strategy.server_lr": {"grid": args.nodp_server_lrs}}}
            search("nodp", {**grid, "scheduler": "fifo", "num_samples": 1}, [], args, work)
        if args.part in ("both", "dp"):
            space = {
                "privacy.clip_norm": {"loguniform": [0.05, 1.0]},
                "strategy.server_lr": {"loguniform": [0.5, 5.0]},
            }
            dp = ["privacy.mode=central", f"privacy.noise_multiplier={z}"]
            tune = {"space": space, "scheduler": "fifo", "num_samples": args.trials}
            search("dp", tune, dp, args, work)


if __name__ == "__main__":
    main()
