"""The docs example, measured: masked-LM (BERT) vs causal (GPT-2) pretraining on the demo
tweets' text, then the same federated sentiment fine-tuning of each export.

    python bench/bench_mlm_vs_causal.py                   # 300 pretraining steps, 20 rounds
    python bench/bench_mlm_vs_causal.py --rounds 10 --steps 200

In one invocation: `fedray pretrain pretrain-bert-tiny` and `fedray pretrain pretrain-tiny` (the
same size: 2 layers, d_model 128, 4 heads; same steps, batch, seed) on the text column of
orchestrator/data/demo/tweets_sentiment.csv (labels unused), each with its own tokenizer trained
on that text (WordPiece / byte-level BPE, vocab 2,048); then `fedray simulate` (the demo preset:
4 sites split by topic, FedAvg, 5 local steps a round, held-out rows per site) from each export.
Reported: accuracy and macro-F1 on the sites' held-out rows per evaluated round, and the wall
time of each step. Every run's metrics.jsonl is kept under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Ray gives its dashboard 30-60 s to start; on a loaded 2-core machine it can take longer (as in
# tests/conftest.py).
ENV = {
    **os.environ,
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "240",
}
ROOT = HERE.parent
TWEETS = ROOT / "orchestrator" / "data" / "demo" / "tweets_sentiment.csv"


def fedray(args: list[str], name: str, work: Path, out: Path) -> tuple[list[dict], float]:
    """Run one fedray command with ``run.name=name`` under ``work``; keep its raw files."""
    cmd = [sys.executable, "-m", "orchestrator.cli", *args, f"run.root={work}", f"run.name={name}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    wall = time.time() - t0
    dest = out / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "console.txt").write_text(" ".join(cmd[1:]) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {dest / 'console.txt'}")
    shutil.copy(work / name / "metrics.jsonl", dest / "metrics.jsonl")
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    print(f"{name}: {wall:.0f} s", flush=True)
    return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "mlm_vs_causal")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="fedray-bench-mlm-") as tmp:
        work = Path(tmp)
        for kind, preset in (("bert", "pretrain-bert-tiny"), ("gpt2", "pretrain-tiny")):
            pre = [
                "pretrain", preset, f"data.paths=[{TWEETS}]", f"data.cache_dir={work / 'cache'}",
                f"train.max_steps={args.steps}", "train.eval_every=0",
            ]  # fmt: skip
            rows, pre_wall = fedray(pre, f"{kind}-pretrain", work, args.out)
            val = [r for r in rows if "val_ppl" in r][-1]
            sim = [
                "simulate", f"model.path={work / f'{kind}-pretrain' / 'export'}",
                "data.tokenizer.path=null", f"data.cache_dir={work / 'cache'}",
                f"federation.num_rounds={args.rounds}",
            ]  # fmt: skip
            rounds, sim_wall = fedray(sim, f"{kind}-federated", work, args.out)
            result[kind] = {
                "pretrain_val_loss": val["val_loss"],
                "pretrain_wall_s": round(pre_wall, 1),
                "federated_wall_s": round(sim_wall, 1),
                "rounds": [
                    {
                        "round": r["round"],
                        "accuracy": r["eval"]["accuracy"],
                        "macro_f1": r["eval"]["macro-f1"],
                    }
                    for r in rounds
                    if "round" in r and r.get("eval", {}).get("accuracy") is not None
                ],
            }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print("\n| round | BERT (MLM) accuracy | macro-F1 | GPT-2 (causal) accuracy | macro-F1 |")
    print("|---|---|---|---|---|")
    gpt = {r["round"]: r for r in result["gpt2"]["rounds"]}
    for r in result["bert"]["rounds"]:
        g = gpt.get(r["round"], {})
        print(f"| {r['round']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
              f"{g.get('accuracy', float('nan')):.3f} | {g.get('macro_f1', float('nan')):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
