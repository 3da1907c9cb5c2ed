"""Federated LoRA fine-tuning from an int8 export vs from the float export it came from.

    python bench/bench_quantized_finetune.py [--rounds N] [--seeds 1 2 3] \
        [--max-examples-per-site N] [--out bench/results/quantized_finetune.json]

The bundled pretrained GPT-2 (``demo:tweets-gpt2``) and its ``fedray compress --method int8``
copy each start the default demo federation (``simulate-demo``: 4 sites split by topic, FedAvg,
5 local steps a round) with ``finetune.mode=lora``, run in one process on a LocalGrid (the real
ClientApp and server loop, no Ray). Per seed (``train.seed``: adapter and head init, batch
order) both runs share everything else. Reported: pooled accuracy / macro-F1 on the sites'
held-out rows (never trained on, nothing tuned on them) at round 0 and at the end, the bytes
sent to sites in round 0 (the full model: the base goes out once) and later rounds (adapters
and head only), and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.compress.pipeline import compress, quiet
from orchestrator.data.sources import DEMO_LABELLED, demo_path


def federation(
    tmp: Path, base: Path, seed: int, a: argparse.Namespace, name: str
) -> dict[str, Any]:
    from clients.client_app import app as client_app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated

    ensure_task_identity()
    run = tmp / f"{name}-{seed}"
    t0 = time.perf_counter()
    overrides = [
        f"run.dir={run}", f"model.path={base}", "data.tokenizer.path=null",
        f"data.cache_dir={tmp}/cache", "finetune.mode=lora", f"train.seed={seed}",
        f"federation.num_rounds={a.rounds}",
        f"partition.max_examples_per_site={a.max_examples_per_site}",
    ]  # fmt: skip
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    n = job.federation.num_sites
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])
    rows = run_federated(grid, job, run).rounds
    wall = time.perf_counter() - t0
    first, last = rows[0], rows[-1]
    return {
        "seed": seed,
        "round0": {k: first["eval"][k] for k in ("accuracy", "macro-f1")},
        "final": {k: last["eval"][k] for k in ("accuracy", "macro-f1")},
        "final_round": last["round"],
        "bytes_down_round0": first["bytes_down"],
        "bytes_down_last": last["bytes_down"],
        "wall_s": wall,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    f1 = [r["final"]["macro-f1"] for r in runs]
    return {
        "macro_f1_mean": statistics.mean(f1),
        "macro_f1_sd": statistics.stdev(f1) if len(f1) > 1 else 0.0,
        "accuracy_mean": statistics.mean(r["final"]["accuracy"] for r in runs),
        "wall_s_mean": statistics.mean(r["wall_s"] for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--max-examples-per-site", type=int, default=1200, help="rows per site (the preset: 1200)"
    )
    p.add_argument("--out", default="bench/results/quantized_finetune.json")
    a = p.parse_args()
    quiet()
    t0 = time.perf_counter()
    res: dict[str, Any] = {**vars(a), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copytree(demo_path("tweets-gpt2"), tmp / "export")
        held_out = demo_path(DEMO_LABELLED)
        compress(tmp / "export", "int8", eval_data=held_out, max_rows=64)
        for name, base in (("float", tmp / "export"), ("int8", tmp / "export-int8")):
            runs = [federation(tmp, base, s, a, name) for s in a.seeds]
            res[name] = {"runs": runs, **summary(runs)}
    diffs = [
        i["final"]["macro-f1"] - f["final"]["macro-f1"]
        for f, i in zip(res["float"]["runs"], res["int8"]["runs"], strict=True)
    ]
    res["int8_minus_float_macro_f1"] = {"per_seed": diffs, "mean": statistics.mean(diffs)}
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
