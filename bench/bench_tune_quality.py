"""Tuning the hard split: Dirichlet(0.1) over 20 sites, where no untuned federation came within 8
points of centralized (BENCHMARKS.md, "Federated vs centralized").

``fedray tune`` on seed 0 over the strategy (fedavg, fedavgm, fedadam, scaffold, fedprox), the
server step, the site learning rate and the local steps (ASHA); the best config re-run on seeds
1 and 2 (``tune.eval_seeds``: held-out seeds). With ``--space conditional`` (the default) the
server step's range depends on the strategy (``tune.conditional``): FedAdam's around 1e-3..1e-1,
the averaging rules' 0.3..1.5; ``--space flat`` is the first run's single range [1e-3, 2].
The centralized baseline at equal compute (``fedray simulate --centralized`` of the same job,
in process) is tuned over its own learning rate on seed 0 and run on seeds 1 and 2 the same way.
A seed sets ``train.seed`` and ``federation.seed`` (the Dirichlet draw).

    python bench/bench_tune_quality.py [--trials 12] [--rounds 20] [--sites 20] [--alpha 0.1]
        [--space conditional|flat] [--part both|central|tune] [--central-lrs 3e-4 1e-3 3e-3]
        [--eval-seeds 1 2] [--central-from OLD/comparison.json]
        [--out bench/results/tune_dirichlet_conditional]

``--part central`` and ``--part tune`` run one side each (two processes side by side); each
writes ``<out>/central.json`` or ``<out>/federated.json``, and whichever finishes second writes
``<out>/comparison.json``. Every trial's rows, config and per-round metrics are kept under
``<out>/tune/`` (``trials/<id>/{config.yaml,metrics.jsonl}``, the eval-seed re-runs too).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = ["fedavg", "fedavgm", "fedadam", "scaffold", "fedprox"]
FEDADAM_LR = [1e-3, 1e-1]  # an adaptive server step (Reddi et al. 2021 tune eta ~1e-2)
AVERAGING_LR = [0.3, 1.5]  # the averaging rules: a step near 1 moves to the sites' mean


def base(args: argparse.Namespace, cache: Path) -> list[str]:
    return [
        "partition.kind=dirichlet",
        f"partition.alpha={args.alpha}",
        f"federation.num_sites={args.sites}",
        f"federation.num_rounds={args.rounds}",
        "partition.max_examples_per_site=1200",
        f"data.cache_dir={cache}",
    ]


def tune_section(args: argparse.Namespace) -> dict:
    space: dict = {
        "strategy.name": {"choice": STRATEGIES},
        "train.lr": {"loguniform": [3e-4, 3e-3]},
        "finetune.local_steps": {"randint": [2, 10]},
    }
    out: dict = {"space": space}
    if args.space == "flat":
        space["strategy.server_lr"] = {"loguniform": [1e-3, 2.0]}
    else:
        lr = {s: FEDADAM_LR if s == "fedadam" else AVERAGING_LR for s in STRATEGIES}
        out["conditional"] = {
            "strategy.name": {s: {"strategy.server_lr": {"loguniform": r}} for s, r in lr.items()}
        }
    return {
        **out,
        "num_samples": args.trials,
        "scheduler": "asha",
        "grace_period": args.grace,
        "reduction_factor": 2,
        "seed": 0,
        "eval_seeds": args.eval_seeds,
    }


def tune(args: argparse.Namespace, work: Path) -> dict:
    from rich.console import Console

    from orchestrator.tune.runner import run_tune
    from orchestrator.tune.setup import load_tune

    preset = ROOT / "orchestrator" / "config" / "presets" / "tune-demo.yaml"
    cfg = {**yaml.safe_load(preset.read_text()), "tune": tune_section(args)}
    (work / "tune-config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    overrides = [
        *base(args, work / "cache"),
        f"federation.eval_every={args.eval_every}",
        "cluster.num_cpus=2",
        f"run.dir={work / 'tune'}",
    ]
    setup = load_tune(str(work / "tune-config.yaml"), overrides)
    t0 = time.monotonic()
    res = run_tune(setup, work / "tune", console=Console(file=io.StringIO()))
    keep(work / "tune", args.out / "tune")
    s = res.summary
    return {
        "best_seed0": s["best"]["metric"],
        "best_config": s["best"]["config"],
        "eval_seeds": s["eval_seeds"],
        "rounds_computed": s["rounds_computed"],
        "rounds_if_all_ran": s["rounds_if_all_ran"],
        "wall_s": round(time.monotonic() - t0, 1),
    }


def keep(tune_dir: Path, out: Path) -> None:
    """The search's files and every trial's config and per-round metrics (no checkpoints)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ("trials.jsonl", "eval.jsonl", "summary.json", "best.yaml", "tune.yaml", "run.log"):
        if (tune_dir / f).exists():
            shutil.copy(tune_dir / f, out / f)
    for trial in sorted((tune_dir / "trials").glob("*")):
        dest = out / "trials" / trial.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "metrics.jsonl"):
            if (trial / f).exists():
                shutil.copy(trial / f, dest / f)


def centralized(args: argparse.Namespace, lr: float, seed: int, work: Path) -> float:
    from rich.console import Console

    from orchestrator.baseline.centralized import CentralizedRun
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.report import RoundTable

    run_dir = work / f"central-{lr}-{seed}"
    overrides = [
        *base(args, work / "cache"),
        f"train.lr={lr}",
        *([f"train.seed={seed}", f"federation.seed={seed}"] if seed else []),
        f"federation.eval_every={args.rounds}",
        f"run.dir={run_dir}",
    ]
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    run = CentralizedRun(job, run_dir)
    run.table = RoundTable(job.task.kind, console=Console(file=io.StringIO()))
    t0 = time.monotonic()
    f1 = run.run().rounds[-1]["eval"]["macro-f1"]
    print(f"centralized lr {lr} seed {seed}: {f1:.4f} ({time.monotonic() - t0:.0f} s)", flush=True)
    return f1


def central(args: argparse.Namespace, work: Path) -> dict:
    t0 = time.monotonic()
    sweep = {lr: centralized(args, lr, 0, work) for lr in args.central_lrs}
    best_lr = max(sweep, key=lambda lr: sweep[lr])
    held = {s: centralized(args, best_lr, s, work) for s in args.eval_seeds}
    return {
        "seed0_by_lr": sweep,
        "best_lr": best_lr,
        "eval_seeds": held,
        "mean": statistics.fmean(held.values()),
        "wall_s": round(time.monotonic() - t0, 1),
    }


SAME_JOB = ("rounds", "sites", "alpha", "central_lrs", "eval_seeds")
"""Settings that make two centralized baselines the same runs (the job, the sweep, the seeds)."""


def central_from(path: Path, args: argparse.Namespace) -> dict:
    """An earlier run's centralized side, if it ran the same job (else SystemExit)."""
    prev = json.loads(path.read_text())
    then = prev.get("settings_central", prev.get("settings", {}))
    diff = {k: (then.get(k), getattr(args, k)) for k in SAME_JOB if then.get(k) != getattr(args, k)}
    if diff:
        raise SystemExit(f"--central-from {path}: not the same job, settings differ: {diff}")
    return {"settings_central": then, "centralized": prev["centralized"], "reused_from": str(path)}


def compare(out: Path) -> None:
    """``comparison.json`` once both sides are there."""
    if not ((out / "central.json").exists() and (out / "federated.json").exists()):
        return
    cen = json.loads((out / "central.json").read_text())
    fed = json.loads((out / "federated.json").read_text())
    seeds = fed["federated"]["eval_seeds"][0]
    gap = round(100 * (seeds["mean"] - cen["centralized"]["mean"]), 2)
    result = {**cen, **fed, "federated_minus_centralized_points": gap}
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    print(
        f"federated (tuned) seeds {seeds['seeds']}: {seeds['values']} mean {seeds['mean']:.4f}; "
        f"centralized (lr {cen['centralized']['best_lr']}): mean "
        f"{cen['centralized']['mean']:.4f}; difference {gap} points"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--grace", type=int, default=4)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--space", choices=["conditional", "flat"], default="conditional")
    p.add_argument("--part", choices=["both", "central", "tune"], default="both")
    p.add_argument(
        "--central-from",
        type=Path,
        default=None,
        help="reuse the centralized side of an earlier comparison.json of the same job",
    )
    p.add_argument("--central-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tune_dirichlet_conditional"
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    with tempfile.TemporaryDirectory(prefix="fedray-bench-tuneq-") as tmp:
        work = Path(tmp)
        if args.central_from is not None:
            result = central_from(args.central_from, args)
            (args.out / "central.json").write_text(json.dumps(result, indent=1))
        elif args.part in ("both", "central"):
            result = {"settings_central": settings, "centralized": central(args, work)}
            (args.out / "central.json").write_text(json.dumps(result, indent=1))
        if args.part in ("both", "tune"):
            result = {"settings_tune": settings, "federated": tune(args, work)}
            (args.out / "federated.json").write_text(json.dumps(result, indent=1))
    compare(args.out)


if __name__ == "__main__":
    main()
