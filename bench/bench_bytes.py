"""Bytes on the wire vs quality: update compression on the demo federation.

    python bench/bench_bytes.py [--rounds N] [--max-examples N] [--seeds 0,1]
        [--configs none,fp16,int8,topk,...] [--set KEY=VALUE ...] [--out bench/results/bytes.json]

Each config runs the default demo federation (``simulate-demo``: 4 sites split by topic, FedAvg,
the bundled pretrained tiny GPT-2) in one process on a LocalGrid (the real ClientApp and server
loop, no Ray), per seed (``train.seed``: head init and data order). ``--rounds`` and
``--max-examples`` (rows per site) default to the preset's; smaller values fit a loaded machine.
``--set`` adds overrides to every config (e.g. ``strategy.name=scaffold``). Measured from the run's
``metrics.jsonl``: upload = the train replies' wire bytes per round (``train.bytes-received``:
Flower's serialized objects, orchestrator/contract/messages.py), download = the bytes sent to
sites per round (train + evaluate messages), and the final pooled macro-F1. Ratios and
macro-F1 deltas are against ``none`` (full float32 fine-tuning) with the same seed.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from clients.client_app import app as client_app
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.report import RoundTable
from orchestrator.federated.rounds import run_federated

CONFIGS: dict[str, list[str]] = {
    "none": [],
    "fp16": ["compression.kind=fp16"],
    "int8": ["compression.kind=int8"],
    "topk": ["compression.kind=topk", "compression.ratio=0.01"],
    "topk-2.5%": ["compression.kind=topk", "compression.ratio=0.025"],
    "topk-2.4%": ["compression.kind=topk", "compression.ratio=0.024"],  # >= 20x with headers
    "topk-5%": ["compression.kind=topk", "compression.ratio=0.05"],
    "lora": ["finetune.mode=lora"],
    "lora-int8": ["finetune.mode=lora", "compression.kind=int8"],
    "lora-all-int8": [  # adapters on every GPT-2 projection, not only attention's c_attn
        "finetune.mode=lora",
        "finetune.lora_target_modules=[c_attn,c_proj,c_fc]",
        "compression.kind=int8",
    ],
    "lora-all-r4-int8": [
        "finetune.mode=lora",
        "finetune.lora_r=4",
        "finetune.lora_alpha=8",
        "finetune.lora_target_modules=[c_attn,c_proj,c_fc]",
        "compression.kind=int8",
    ],
    "int8-fp16down": ["compression.kind=int8", "compression.download=fp16"],
}


def run_one(
    name: str,
    seed: int,
    rounds: int | None,
    cache_dir: Path,
    max_examples: int | None,
    more: list[str],
) -> dict[str, Any]:
    overrides = [
        f"data.cache_dir={cache_dir}",
        *([f"federation.num_rounds={rounds}"] if rounds else []),
        *([f"partition.max_examples_per_site={max_examples}"] if max_examples else []),
        f"train.seed={seed}",
        *more,
        *CONFIGS[name],
    ]
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    n = job.federation.num_sites
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = RoundTable(job.task.kind, console=Console(file=io.StringIO()))
        result = run_federated(grid, job, Path(tmp) / "run", table=table)
    rows = result.rounds[1:]
    return {
        "config": name,
        "seed": seed,
        "upload_per_round": statistics.mean(r["train"]["bytes-received"] for r in rows),
        "download_per_round": statistics.mean(r["bytes_down"] for r in rows),
        "macro_f1": rows[-1]["eval"]["macro-f1"],
        "accuracy": rows[-1]["eval"]["accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
        "rounds": job.federation.num_rounds,
        "overrides": more,
    }


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {r["seed"]: r for r in results if r["config"] == "none"}
    out = []
    for name in dict.fromkeys(r["config"] for r in results):
        rs = [r for r in results if r["config"] == name and r["seed"] in base]
        if not rs:
            continue
        out.append(
            {
                "config": name,
                "upload_MB_per_round": statistics.mean(r["upload_per_round"] for r in rs) / 1e6,
                "upload_x_fewer": statistics.mean(
                    base[r["seed"]]["upload_per_round"] / r["upload_per_round"] for r in rs
                ),
                "download_MB_per_round": statistics.mean(r["download_per_round"] for r in rs) / 1e6,
                "macro_f1": statistics.mean(r["macro_f1"] for r in rs),
                "macro_f1_delta_points": 100
                * statistics.mean(r["macro_f1"] - base[r["seed"]]["macro_f1"] for r in rs),
                "seeds": [r["seed"] for r in rs],
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="default: the preset's")
    p.add_argument("--max-examples", type=int, default=None, help="rows per site; default: preset")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--configs", default="none,fp16,int8,topk,lora,lora-int8")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "fedray-bench-cache"))
    p.add_argument("--out", default="")
    p.add_argument("--no-baseline", action="store_true", help="do not add the float32 run ('none')")
    args = p.parse_args()
    ensure_task_identity()
    torch.set_num_threads(args.threads)
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    if "none" not in names and not args.no_baseline:
        names.insert(0, "none")
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            r = run_one(name, seed, args.rounds, Path(args.cache_dir), args.max_examples, args.set)
            print(json.dumps(r), flush=True)
            results.append(r)
    summary = summarize(results)
    print(
        f"\n{'config':<14} {'up MB/rnd':>10} {'x fewer':>8} {'down MB/rnd':>11} "
        f"{'macro-F1':>8} {'d points':>8}"
    )
    for s in summary:
        print(
            f"{s['config']:<14} {s['upload_MB_per_round']:10.3f} {s['upload_x_fewer']:8.1f} "
            f"{s['download_MB_per_round']:11.2f} {s['macro_f1']:8.3f} "
            f"{s['macro_f1_delta_points']:+8.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
