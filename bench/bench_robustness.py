"""Robust aggregation under attack: final macro-F1 of each strategy x attack, vs clean FedAvg.

    python bench/bench_robustness.py [--seeds 0 1] [--sites 10] [--rounds 4]
        [--strategies fedavg median trimmed_mean krum multikrum centered_clip ...]
        [--attacks none sign_flip scale alie ipm label_flip]
        [--clip-radius 2.0] [--no-oracle]
        [--out bench/results/robustness.json] [--md bench/results/robustness.md]

A sentiment federation of ``--sites`` simulated sites over the bundled demo tweets, split by a
Dirichlet(``--alpha``) label partition, fine-tunes the ``simulate-demo`` tiny GPT-2 classifier.
``attack.fraction`` (default 0.2) of the sites attack; which ones, the partition and the site
sampling all follow ``federation.seed`` (= the seed; ``train.seed`` too). Each federation runs in
this process on :class:`orchestrator.federated.local_grid.LocalGrid` through
:func:`orchestrator.federated.rounds.run_federated`: the same ServerApp round loop and ClientApp
as ``fedray simulate``, without Ray start-up. The score is the last round's pooled macro-F1 over
every site's held-out split (attackers' held-out labels are not flipped), from ``metrics.jsonl``.

Attack strengths (``attack.scale``) were fixed before running (the reason is next to each in
:data:`ATTACKS`), not tuned to the results. Centered clipping's radius ``--clip-radius``
(default 2.0) was set from one clean FedAvg run before the grid: the honest sites' update L2
norms were 2.0-2.5 (median ~2.2), so tau = 2 leaves an honest update nearly unclipped and cuts
a x100 one to the size of an honest one. The ``oracle`` row (:data:`ORACLE`) is FedAvg over the
honest sites only: what a rule that discards exactly the attackers reaches.

Every run is appended to the ``--out`` JSON as soon as it finishes (written atomically), and a
run already there is skipped: a killed benchmark continues where it stopped. The JSON keeps the
settings it was made with and refuses to mix runs made with other ones. The ``--md`` table is
rewritten from the JSON after every run (``--report-only`` just rewrites it).

Besides the score, each run records per round and per site the L2 norm of the update the site
sent (read from the reply by LocalGrid's ``intercept``, unchanged) and what the rule did to the
attackers (discarded / trimmed / clipped), for reading the table.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES: dict[str, list[str]] = {
    "fedavg": ["strategy.name=fedavg"],
    "median": ["strategy.name=median"],
    "trimmed_mean": ["strategy.name=trimmed_mean", "strategy.trim_fraction=0.2"],
    "krum": ["strategy.name=krum", "strategy.num_byzantine=2"],
    "multikrum": ["strategy.name=multikrum", "strategy.num_byzantine=2"],
    "centered_clip": ["strategy.name=centered_clip"],  # + clip_radius from --clip-radius
    "fedavg_capped": ["strategy.name=fedavg", "strategy.weighting=capped"],
    "fedavg_clip2x": [
        "strategy.name=fedavg",
        "strategy.clip_update_norm=2.0",
        "strategy.clip_relative=true",
    ],
}
"""Strategy settings (rows). ``fedavg_clip2x``: each update's L2 norm clipped to 2x the round's
median norm, then FedAvg."""

ORACLE = "oracle"
"""Not a defence: FedAvg with the attacking sites' train replies dropped (the benchmark's grid
answers their train messages with an error, as a crashed site would), so the model learns from
the honest sites only; evaluation still pools all sites. It is what a perfect filter reaches: the
attackers' own data is lost to the federation whatever the rule (a rule can beat it only where
an attacker's reply still carries its honest training signal, e.g. an ALIE reply or a clipped x100
update). It does not depend on the attack; one run per seed (``--oracle``)."""

ATTACKS: dict[str, list[str]] = {
    "none": ["attack.kind=none"],
    # -10 x the honest update: with 2 of 10 sites the FedAvg mean is (8 - 20)/10 = -1.2x the
    # honest mean, i.e. it ascends (scale 1 would only shrink it to 0.6x).
    "sign_flip": ["attack.kind=sign_flip", "attack.scale=10"],
    # x100 boosting (Bhagoji et al. 2019; the project's integration test).
    "scale": ["attack.kind=scale", "attack.scale=100"],
    # Baruch et al. 2019: mu - z_max sigma of the colluders' honest updates (z_max = 0.25 for
    # 2 of 10 sites); attack.scale unused.
    "alie": ["attack.kind=alie"],
    # Xie et al. 2020 with epsilon = 0.1 (the paper's and Karimireddy et al. 2021's setting).
    "ipm": ["attack.kind=ipm", "attack.scale=0.1"],
    # class i -> C-1-i before local training (Tolpegin et al. 2020); attack.scale unused.
    "label_flip": ["attack.kind=label_flip"],
}
"""Attacks (columns) and their fixed strengths."""

DEFAULT_STRATEGIES = ["fedavg", "median", "trimmed_mean", "krum", "multikrum", "centered_clip"]
DEFAULT_ATTACKS = list(ATTACKS)
REFERENCE = ("fedavg", "none")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=list(STRATEGIES))
    p.add_argument("--attacks", nargs="+", default=DEFAULT_ATTACKS, choices=list(ATTACKS))
    p.add_argument("--fraction", type=float, default=0.2, help="attack.fraction")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet partition.alpha")
    p.add_argument("--examples", type=int, default=200, help="partition.max_examples_per_site")
    p.add_argument("--local-steps", type=int, default=8, help="finetune.local_steps")
    p.add_argument("--clip-radius", type=float, default=2.0, help="centered_clip's tau")
    p.add_argument("--threads", type=int, default=1, help="torch threads per (in-process) site")
    p.add_argument("--cache-dir", default="/tmp/fedray-bench-cache", help="data.cache_dir")
    p.add_argument("--work-dir", default="/tmp/fedray-bench-robustness", help="run dirs (deleted)")
    p.add_argument("--out", default=str(ROOT / "bench/results/robustness.json"))
    p.add_argument("--md", default=str(ROOT / "bench/results/robustness.md"))
    p.add_argument("--report-only", action="store_true", help="only rewrite --md from --out")
    p.add_argument(
        "--oracle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run FedAvg over the honest sites only, once per seed (the robust ceiling)",
    )
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What every run in one JSON shares (runs made with other settings are not comparable)."""
    return {
        "sites": args.sites,
        "rounds": args.rounds,
        "fraction": args.fraction,
        "alpha": args.alpha,
        "examples": args.examples,
        "local_steps": args.local_steps,
        "clip_radius": args.clip_radius,
        "preset": "simulate-demo",
    }


def overrides(args: argparse.Namespace, strategy: str, attack: str, seed: int, run_dir: Path):
    extra = [f"strategy.clip_radius={args.clip_radius}"] if strategy == "centered_clip" else []
    frac = [] if attack == "none" else [f"attack.fraction={args.fraction}"]
    if strategy == ORACLE:  # honest training everywhere; the grid drops the attackers' replies
        return overrides(args, "fedavg", "none", seed, run_dir)
    return [
        f"federation.num_sites={args.sites}",
        f"federation.num_rounds={args.rounds}",
        "federation.min_sites=1",
        f"federation.seed={seed}",
        f"train.seed={seed}",
        "partition.kind=dirichlet",
        f"partition.alpha={args.alpha}",
        f"partition.max_examples_per_site={args.examples}",
        f"finetune.local_steps={args.local_steps}",
        f"data.cache_dir={args.cache_dir}",
        f"run.dir={run_dir}",
        *STRATEGIES[strategy],
        *extra,
        *ATTACKS[attack],
        *frac,
    ]


def run_one(args: argparse.Namespace, strategy: str, attack: str, seed: int) -> dict[str, Any]:
    from rich.console import Console

    from clients.client_app import app as client_app
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config
    from orchestrator.contract.arrays import to_numpy
    from orchestrator.contract.messages import ARRAYS
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import run_federated

    run_dir = Path(args.work_dir) / f"{strategy}-{attack}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    ov = overrides(args, strategy, attack, seed, run_dir)
    job = load_config(FederatedJob, None, ov, "simulate-demo")

    norms: dict[str, list[float]] = {}  # site -> L2 norm of each train reply's update, in order

    def record_norm(reply):  # observe only: the reply goes on unchanged
        train = reply.metadata.message_type == "train"
        if train and reply.has_content() and ARRAYS in reply.content:
            arrays = to_numpy(reply.content[ARRAYS])
            sq = sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())
            pid = grid.contexts[reply.metadata.src_node_id].node_config["partition-id"]
            norms.setdefault(f"site-{pid}", []).append(math.sqrt(sq))
        return reply

    node_configs = [
        {"partition-id": i, "num-partitions": args.sites, "num-threads": args.threads}
        for i in range(args.sites)
    ]
    app = client_app
    dropped: list[int] = []
    if strategy == ORACLE:
        from orchestrator.contract.attackers import select_attackers

        dropped = select_attackers(args.sites, args.fraction, None, seed)

        def app(msg, ctx):  # LocalGrid turns the exception into an error reply
            pid = ctx.node_config["partition-id"]
            if msg.metadata.message_type == "train" and pid in dropped:
                raise RuntimeError("oracle: an attacking site's reply is dropped")
            return client_app(msg, ctx)

    grid = LocalGrid(app, node_configs, intercept=record_norm)
    table = RoundTable(job.task.kind, Console(file=io.StringIO()))
    t0 = time.perf_counter()
    run_federated(grid, job, run_dir, table=table)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)

    attackers = sorted({s for r in rows for s in r.get("attack", {}).get("sites", [])})
    attackers = attackers or [f"site-{i}" for i in dropped]
    actions = []  # per round: what the rule did to each site (discarded/trimmed/clipped/...)
    rejected = []
    for r in rows[1:]:
        sites = r.get("sites", {})
        actions.append({s: v["aggregation"] for s, v in sites.items() if v.get("aggregation")})
        rejected.append({s: v["rejected"] for s, v in sites.items() if v.get("rejected")})
    return {
        "strategy": strategy,
        "attack": attack,
        "seed": seed,
        "overrides": ov,
        "macro_f1": rows[-1]["eval"]["macro-f1"],
        "accuracy": rows[-1]["eval"]["accuracy"],
        "macro_f1_per_round": [r.get("eval", {}).get("macro-f1") for r in rows],
        "accuracy_per_round": [r.get("eval", {}).get("accuracy") for r in rows],
        "attackers": attackers,
        "update_norms": norms,
        "aggregation": actions,
        "rejected": rejected,
        "wall_s": round(wall, 1),
    }


# --------------------------------------------------------------------------------------------
# Results file and report


def key(strategy: str, attack: str, seed: int) -> str:
    return f"{strategy}|{attack}|{seed}"


def load(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    if not path.exists():
        return {"settings": settings, "runs": {}}
    data = json.loads(path.read_text())
    if data.get("settings") != settings:
        raise SystemExit(
            f"{path} was made with settings {data.get('settings')}, not {settings}; "
            "pass another --out (or the same settings) to keep results comparable"
        )
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def scores(data: dict[str, Any], strategy: str, attack: str) -> list[float]:
    runs = data["runs"].values()
    return [
        r["macro_f1"]
        for r in sorted(runs, key=lambda r: r["seed"])
        if r["strategy"] == strategy and r["attack"] == attack
    ]


def cell(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = 100 * statistics.fmean(xs)
    if len(xs) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {100 * statistics.stdev(xs):.1f}"


def report(data: dict[str, Any], wall_s: float | None = None) -> str:
    runs = list(data["runs"].values())
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    s = data["settings"]
    mean = {
        (st, a): statistics.fmean(x)
        for st in [*strategies, ORACLE]
        for a in [*attacks, "dropped"]
        if (x := scores(data, st, a))
    }
    ref = mean.get(REFERENCE)
    oracle = mean.get((ORACLE, "dropped"))
    attacked = [a for a in attacks if a != "none"]
    lines = [
        f"Final-round pooled macro-F1 (%) over the held-out splits of all {s['sites']} sites, "
        f"mean ± sample std over seeds {seeds}; Dirichlet alpha={s['alpha']}, "
        f"{int(s['fraction'] * 100)}% attacking sites, {s['rounds']} rounds, "
        f"{s['local_steps']} local steps, <= {s['examples']} examples/site, centered_clip "
        f"tau={s['clip_radius']:g}."
        + (f" Clean FedAvg (reference) = **{100 * ref:.1f}**." if ref is not None else ""),
        "",
        "| strategy | " + " | ".join(attacks) + " | worst gap to clean FedAvg |",
        "|---|" + "---|" * (len(attacks) + 1),
    ]
    for st in strategies:
        cells = [cell(scores(data, st, a)) for a in attacks]
        gaps = [mean[(st, a)] - ref for a in attacks if (st, a) in mean and ref is not None]
        worst = f"{100 * min(gaps):+.1f}" if gaps else "-"
        lines.append(f"| {st} | " + " | ".join(cells) + f" | {worst} |")
    if oracle is not None:
        o = cell(scores(data, ORACLE, "dropped"))
        lines.append(
            "| *oracle: FedAvg, honest sites only* | "
            + " | ".join("-" if a == "none" else o for a in attacks)
            + " | |"
        )
    if ref is not None:
        best, gap, gap_o = [], [], []
        for a in attacks:
            cands = [(mean[(st, a)], st) for st in strategies if st != "fedavg" and (st, a) in mean]
            if cands:
                v, st = max(cands)
                best.append(st)
                gap.append(f"{100 * (v - ref):+.1f}")
                ok = oracle is not None and a != "none"
                gap_o.append(f"{100 * (v - oracle):+.1f}" if ok else "-")
            else:
                best.append("-")
                gap.append("-")
                gap_o.append("-")
        lines.append("| *best robust setting* | " + " | ".join(best) + " | |")
        lines.append("| *its gap to clean FedAvg (points)* | " + " | ".join(gap) + " | |")
        if oracle is not None:
            lines.append("| *its gap to the oracle (points)* | " + " | ".join(gap_o) + " | |")
    if len(seeds) > 1:
        lines += [
            "",
            "Per seed (" + " / ".join(f"seed {x}" for x in seeds) + "):",
            "",
            "| strategy | " + " | ".join(attacks) + " |",
            "|---|" + "---|" * len(attacks),
        ]

        def per_seed(st: str, a: str) -> str:
            by = {
                r["seed"]: r["macro_f1"] for r in runs if r["strategy"] == st and r["attack"] == a
            }
            return " / ".join(f"{100 * by[x]:.1f}" if x in by else "-" for x in seeds)

        for st in strategies:
            lines.append(f"| {st} | " + " | ".join(per_seed(st, a) for a in attacks) + " |")
        if oracle is not None:
            o = per_seed(ORACLE, "dropped")
            lines.append(
                "| *oracle* | " + " | ".join("-" if a == "none" else o for a in attacks) + " |"
            )
    who = {
        r["seed"]: r["attackers"]
        for r in runs
        if r["attack"] in attacked or r["strategy"] == ORACLE
    }
    total = sum(r["wall_s"] for r in runs)

    def strength(a: str) -> str:
        given = [o.split("=", 1)[1] for o in ATTACKS[a] if o.startswith("attack.scale=")]
        return f"{a} ({given[0]})" if given else a

    strengths = ", ".join(strength(a) for a in attacked)
    command = (
        f"python bench/bench_robustness.py --seeds {' '.join(map(str, seeds))} "
        f"--sites {s['sites']} --rounds {s['rounds']} --fraction {s['fraction']} "
        f"--alpha {s['alpha']} --examples {s['examples']} --local-steps {s['local_steps']} "
        f"--clip-radius {s['clip_radius']}"
    )
    lines += [
        "",
        f"Attacks (attack.scale in brackets): {strengths}.",
        f"Made with `{command}` (default strategies and attacks; extra rows with "
        "`--strategies NAME --attacks ...`; runs already in the JSON are skipped).",
        "Attacking sites: "
        + "; ".join(f"seed {x}: {', '.join(who[x])}" for x in sorted(who))
        + ".",
        f"{len(runs)} runs, {total / 60:.1f} min of federation wall time"
        + (f" ({wall_s / 60:.1f} min this invocation)" if wall_s else "")
        + f"; {platform.machine()}, {os.cpu_count()} cores (shared).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out, md = Path(args.out), Path(args.md)
    data = load(out, settings_of(args))
    t_start = time.perf_counter()
    if not args.report_only:
        todo = [
            (st, a, seed)
            for seed in args.seeds
            for a in args.attacks
            for st in args.strategies
            if key(st, a, seed) not in data["runs"]
        ]
        if args.oracle:
            todo += [(ORACLE, "dropped", seed) for seed in args.seeds]
            todo = [t for t in todo if key(*t) not in data["runs"]]
        # The reference first, so the table has its anchor early.
        todo.sort(key=lambda t: (t[:2] != REFERENCE, t[2]))
        print(f"{len(todo)} run(s) to do, {len(data['runs'])} already in {out}", flush=True)
        for i, (st, a, seed) in enumerate(todo, 1):
            r = run_one(args, st, a, seed)
            data["runs"][key(st, a, seed)] = r
            save(out, data)
            md.write_text(report(data))
            print(
                f"[{i}/{len(todo)}] {st:14s} {a:10s} seed {seed}: macro-F1 "
                f"{r['macro_f1']:.4f} (per round {[round(x, 3) for x in r['macro_f1_per_round']]})"
                f" attackers {r['attackers']} {r['wall_s']:.0f}s",
                flush=True,
            )
    text = report(data, time.perf_counter() - t_start if not args.report_only else None)
    md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
