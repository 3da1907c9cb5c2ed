"""Federated vs centralized at equal compute: final macro-F1 of each strategy and of the
centralized baseline, on the demo split and a harder one.

    python bench/bench_quality.py [--seeds 0 1] [--splits demo dirichlet]
        [--strategies fedavg fedprox fedavgm scaffold fedadam] [--rounds N]
        [--out bench/results/quality.json] [--md bench/results/quality.md]

Splits: ``demo`` = the default ``fedray simulate`` job as shipped (4 sites by topic, the bundled
pretrained tiny GPT-2, its rounds and local steps); ``dirichlet`` = the same job over 20 sites
whose label mixes are Dirichlet(0.1) (``partition.kind=dirichlet partition.alpha=0.1
federation.num_sites=20``, every site trains every round). The seed sets ``train.seed`` (data
order, head init) and ``federation.seed`` (the Dirichlet draw). A strategy named in the list but
unknown to this checkout (e.g. ``scaffold`` before it is merged) is reported as skipped.

Equal compute: the centralized row is ``fedray simulate --centralized`` of the same job (the
union of the sites' training rows, as many examples per round as the federation processes,
evaluated on the same per-site held-out rows). The score is the last round's pooled macro-F1
over every site's held-out rows. Each federation runs in this process on
:class:`orchestrator.federated.local_grid.LocalGrid` through
:func:`orchestrator.federated.rounds.run_federated` (the same round loop, strategy and ClientApp
as ``fedray simulate``, without the simulation engine's start-up), evaluating only before round 1
and after the last (``federation.eval_every``): the numbers are the engine's, the time is not.

Every run is appended to ``--out`` as soon as it finishes and skipped when already there, so a
killed benchmark continues; ``--md`` is rewritten from it after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS: dict[str, list[str]] = {
    "demo": [],
    "dirichlet": [
        "partition.kind=dirichlet",
        "partition.alpha=0.1",
        "federation.num_sites=20",
        "federation.min_sites=10",
    ],
}
STRATEGIES: dict[str, list[str]] = {
    "fedavg": ["strategy.name=fedavg"],
    "fedprox": ["strategy.name=fedprox", "strategy.proximal_mu=0.01"],
    "fedavgm": ["strategy.name=fedavgm"],
    "scaffold": ["strategy.name=scaffold"],
    "fedadam": ["strategy.name=fedadam"],
}
CENTRALIZED = "centralized"


def job_for(split: str, seed: int, extra: list[str], cache: Path) -> Any:
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob

    overrides = [
        *SPLITS[split],
        f"train.seed={1234 + seed}",
        f"federation.seed={seed}",
        f"data.cache_dir={cache}",
        *extra,
    ]
    # Evaluate at the start and the end only (the score), not every round.
    probe = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    overrides.append(f"federation.eval_every={probe.federation.num_rounds}")
    return load_config(FederatedJob, None, overrides, default_preset="simulate-demo")


def run_one(
    split: str, seed: int, name: str, rounds: int | None, tmp: Path, more: list[str]
) -> dict[str, Any]:
    from clients.client_app import app as client_app
    from orchestrator.baseline.centralized import CentralizedRun
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import run_federated

    extra = [*more, *([] if name == CENTRALIZED else STRATEGIES[name])]
    if rounds:
        extra.append(f"federation.num_rounds={rounds}")
    run_dir = tmp / f"{split}-{seed}-{name}"
    job = job_for(split, seed, [*extra, f"run.dir={run_dir}"], tmp / "cache")
    t0 = time.monotonic()
    if name == CENTRALIZED:
        central = CentralizedRun(job, run_dir)
        central.table = RoundTable(job.task.kind, console=_quiet())
        rows = central.run().rounds
    else:
        n = job.federation.num_sites
        grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])
        rows = run_federated(grid, job, run_dir, table=RoundTable(job.task.kind, _quiet())).rounds
    return {
        "split": split,
        "seed": seed,
        "strategy": name,
        "rounds": job.federation.num_rounds,
        "macro_f1": rows[-1]["eval"]["macro-f1"],
        "accuracy": rows[-1]["eval"]["accuracy"],
        "start_macro_f1": rows[0]["eval"]["macro-f1"],
        "seconds": round(time.monotonic() - t0, 1),
        "overrides": more,
    }


def _quiet() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def known_strategies() -> set[str]:
    from orchestrator.config.federated import STRATEGIES as NAMES

    return set(NAMES)


def markdown(runs: list[dict[str, Any]], skipped: list[str]) -> str:
    out = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()}, {os.cpu_count()} cores"
        f" | final pooled macro-F1 (x100), mean over seeds (each seed)",
        "",
        "| split | strategy | rounds | macro-F1 | seeds | vs centralized |",
        "|---|---|---|---|---|---|",
    ]
    for split in dict.fromkeys(r["split"] for r in runs):
        rows = [r for r in runs if r["split"] == split]
        by: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by.setdefault(r["strategy"], []).append(r)
        central = by.get(CENTRALIZED)
        base = statistics.mean(r["macro_f1"] for r in central) if central else None
        for name, rs in by.items():
            mean = statistics.mean(r["macro_f1"] for r in rs)
            seeds = ", ".join(
                f"{100 * r['macro_f1']:.1f}" for r in sorted(rs, key=lambda r: r["seed"])
            )
            gap = "-" if base is None or name == CENTRALIZED else f"{100 * (mean - base):+.1f}"
            out.append(
                f"| {split} | {name} | {rs[0]['rounds']} | {100 * mean:.1f} | {seeds} | {gap} |"
            )
    if skipped:
        out += ["", f"Not in this checkout (skipped): {', '.join(skipped)}."]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--rounds", type=int, default=None, help="override federation.num_rounds")
    p.add_argument("--no-centralized", action="store_true", help="skip the baseline runs")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides, every run"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    p.add_argument("--md", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    known = known_strategies()
    skipped = [s for s in a.strategies if s not in known]
    names = [*([] if a.no_centralized else [CENTRALIZED]), *(s for s in a.strategies if s in known)]
    runs: list[dict[str, Any]] = json.loads(a.out.read_text()) if a.out.exists() else []
    done = {
        (r["split"], r["seed"], r["strategy"], r["rounds"], tuple(r["overrides"])) for r in runs
    }
    with tempfile.TemporaryDirectory(prefix="fedray-quality-") as tmp:
        for split in a.splits:
            for seed in a.seeds:
                for name in names:
                    rounds = (
                        a.rounds
                        or job_for(split, seed, [], Path(tmp) / "cache").federation.num_rounds
                    )
                    if (split, seed, name, rounds, tuple(a.set)) in done:
                        continue
                    r = run_one(split, seed, name, a.rounds, Path(tmp), a.set)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
                    a.out.parent.mkdir(parents=True, exist_ok=True)
                    tmp_out = a.out.with_suffix(".tmp")
                    tmp_out.write_text(json.dumps(runs, indent=1))
                    tmp_out.replace(a.out)
                    a.md.write_text(markdown(runs, skipped))
    print(markdown(runs, skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
