"""ASHA vs random search on the federated demo: the same space, the same trials (the same seeded
draws), one search with ASHA stopping trials at evaluated rounds and one running every trial to
the end (FIFO). Reports each search's best macro-F1, the rounds it computed, its wall time, and
the best config of each re-run on other seeds (``tune.eval_seeds``: held-out seeds, not the one
tuned on).

    python bench/bench_tune.py [--trials 8] [--rounds 9] [--grace 1] [--rf 3]
        [--eval-seeds 1 2] [--set KEY=VALUE ...] [--out bench/results/tune_asha_vs_random]

Every trial's row is kept (``<out>/<search>/trials.jsonl``, ``eval.jsonl``, ``summary.json``);
the comparison goes to ``<out>/comparison.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def search(name: str, scheduler: str, args: argparse.Namespace, work: Path) -> dict:
    from rich.console import Console

    from orchestrator.tune.runner import run_tune
    from orchestrator.tune.setup import load_tune

    overrides = [
        f"federation.num_rounds={args.rounds}",
        "federation.eval_every=1",
        f"partition.max_examples_per_site={args.max_examples}",
        f"data.cache_dir={work / 'cache'}",
        "cluster.num_cpus=2",
        f"tune.num_samples={args.trials}",
        f"tune.scheduler={scheduler}",
        f"tune.grace_period={args.grace}",
        f"tune.reduction_factor={args.rf}",
        f"tune.eval_seeds=[{','.join(map(str, args.eval_seeds))}]",
        f"tune.seed={args.seed}",
        f"run.dir={work / name}",
        *args.set,
    ]
    setup = load_tune("tune-demo", overrides)
    t0 = time.monotonic()
    res = run_tune(setup, work / name, console=Console(file=io.StringIO()))
    wall = time.monotonic() - t0
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    for f in ("trials.jsonl", "eval.jsonl", "summary.json", "best.yaml", "tune.yaml"):
        if (work / name / f).exists():
            shutil.copy(work / name / f, out / f)
    s = res.summary
    ev = s["eval_seeds"][0] if s["eval_seeds"] else {}
    return {
        "search": name,
        "best_macro_f1": s["best"]["metric"],
        "best_config": s["best"]["config"],
        "rounds_computed": s["rounds_computed"],
        "rounds_if_all_ran": s["rounds_if_all_ran"],
        "status": s["status"],
        "eval_seeds_mean": ev.get("mean"),
        "eval_seeds_stdev": ev.get("stdev"),
        "eval_seeds_values": ev.get("values"),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--rf", type=float, default=3.0)
    p.add_argument("--max-examples", type=int, default=400)
    p.add_argument("--eval-seeds", type=int, nargs="*", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="more key=value overrides")
    p.add_argument(
        "--asha-only",
        action="store_true",
        help="run only the ASHA search and compare with the random search already in --out "
        "(the same seed draws the same trials: another grace period / reduction factor)",
    )
    p.add_argument("--tag", default="asha", help="name of the ASHA search's results folder")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tune_asha_vs_random")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "comparison.json"
    with tempfile.TemporaryDirectory(prefix="fedray-bench-tune-") as tmp:
        asha = search(args.tag, "asha", args, Path(tmp))
        if args.asha_only:
            rnd = next(
                r for r in json.loads(previous.read_text())["runs"] if r["search"] == "random"
            )
        else:
            rnd = search("random", "fifo", args, Path(tmp))
    runs = [asha, rnd]
    cmp = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
        "asha_minus_random_points": round(100 * (asha["best_macro_f1"] - rnd["best_macro_f1"]), 2),
        "asha_rounds_fraction": round(asha["rounds_computed"] / rnd["rounds_computed"], 3),
    }
    name = "comparison.json" if args.tag == "asha" else f"comparison-{args.tag}.json"
    (args.out / name).write_text(json.dumps(cmp, indent=1))
    for r in runs:
        print(
            f"{r['search']:7s} best macro-F1 {r['best_macro_f1']:.4f} | rounds "
            f"{r['rounds_computed']}/{r['rounds_if_all_ran']} | eval seeds "
            f"{r['eval_seeds_values']} | {r['wall_s']} s",
            flush=True,
        )
    print(
        f"ASHA - random: {cmp['asha_minus_random_points']} points macro-F1, "
        f"{100 * cmp['asha_rounds_fraction']:.0f}% of the rounds"
    )


if __name__ == "__main__":
    main()
