"""fedray pretrain vs a plain torchrun DDP loop: throughput once started, and start-up overhead.

    python bench/bench_pretrain.py                 # CPU: 2 workers over gloo
    python bench/bench_pretrain.py --gpu           # GPU: all visible GPUs, NCCL, bf16; adds MFU

Both runs train the same model (same HF config), on the same packed data, with the same global
batch, on the same machine, in this one invocation (alternating, --repeats times). Reported:
- steady-state tokens/s: tokens of steps (warmup, N] over the wall time between the ends of step
  `warmup` and step N (so per-step overheads such as metric shipping count);
- time to first step: from launching the command to the end of step 1;
- ratios fedray / torchrun. Target: throughput ratio >= 0.95.
Results are appended to bench/results/pretrain.md as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def summarize(steps: list[dict], t_launch: float, tokens_per_step: int, warmup: int) -> dict:
    steps = sorted((s for s in steps if "loss" in s), key=lambda s: s["step"])
    by_step = {s["step"]: s for s in steps}
    # The final step also runs validation (fedray); end the window before it for both runs.
    last = steps[-2]["step"]
    span = by_step[last]["wall_time"] - by_step[warmup]["wall_time"]
    out = {
        "tokens_per_s": tokens_per_step * (last - warmup) / span,
        "time_to_first_step_s": by_step[1]["wall_time"] - t_launch,
        "median_step_ms": 1e3 * statistics.median(s["step_time"] for s in steps[warmup:]),
        "final_loss": steps[-1]["loss"],
    }
    mfu = [s["mfu"] for s in steps[warmup:] if "mfu" in s]
    if mfu:
        out["mfu"] = statistics.median(mfu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="default: 2 on CPU, all GPUs on GPU")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "pretrain.md"))
    a = ap.parse_args()

    import torch

    from orchestrator.config import PretrainJob, load_config
    from orchestrator.data import prepare_text_data
    from orchestrator.models import hf_config
    from orchestrator.runs import read_metrics

    workers = a.workers or (torch.cuda.device_count() if a.gpu else 2)
    work = Path(tempfile.mkdtemp(prefix="fedray-bench-"))
    overrides = [
        f"model.n_layer={a.n_layer}",
        f"model.d_model={a.d_model}",
        f"model.n_head={max(1, a.d_model // 64)}",
        f"data.block_size={a.block}",
        f"data.cache_dir={work / 'cache'}",
        f"train.max_steps={a.steps}",
        f"train.micro_batch_size={a.micro}",
        f"train.global_batch_size={a.micro * workers}",
        "train.eval_every=0",
        f"train.log_every={a.steps}",
        f"checkpoint.every_steps={a.steps}",
        f"scaling.num_workers={workers}",
        f"scaling.use_gpu={str(a.gpu).lower()}",
        f"run.root={work / 'runs'}",
        "fault.rank=0",
    ]
    job = load_config(PretrainJob, None, overrides, default_preset="pretrain-tiny")
    data = prepare_text_data(job.data)  # tokenize once, outside both timings
    cfg = hf_config(
        job.model, len(data.tokenizer), job.data.block_size, data.tokenizer.eos_token_id
    )
    (work / "model.json").write_text(json.dumps(cfg.to_dict()))
    train_npy = work / "train.npy"  # the same training blocks, as one array for the baseline
    np.save(train_npy, data.packed.train[np.arange(len(data.packed.train))])
    tokens_per_step = a.micro * workers * a.block
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    results: dict[str, list[dict]] = {"fedray": [], "torchrun": []}
    for r in range(a.repeats):
        # torchrun baseline
        out = work / f"torchrun-{r}.jsonl"
        t = time.time()
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
             str(HERE / "torchrun_baseline.py"), "--data", str(train_npy), "--config",
             str(work / "model.json"), "--steps", str(a.steps), "--micro", str(a.micro), "--out", str(out)],
            check=True, env=env,
        )  # fmt: skip
        results["torchrun"].append(summarize(read_metrics(out), t, tokens_per_step, a.warmup))
        # fedray, launched like a user would (CLI, embedded Ray started and stopped by the command)
        name = f"fedray-{r}"
        t = time.time()
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "pretrain", *overrides, f"run.name={name}"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        results["fedray"].append(
            summarize(
                read_metrics(work / "runs" / name / "metrics.jsonl"), t, tokens_per_step, a.warmup
            )
        )

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in results[kind])

    thr = med("fedray", "tokens_per_s") / med("torchrun", "tokens_per_s")
    start_f, start_t = (
        med("fedray", "time_to_first_step_s"),
        med("torchrun", "time_to_first_step_s"),
    )
    device = torch.cuda.get_device_name(0) if a.gpu else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} | {device} | {workers} workers | "
        f"gpt2 {a.n_layer}L d{a.d_model} block {a.block} micro {a.micro} | {a.steps} steps x {a.repeats}\n",
        "| | fedray pretrain | plain torchrun DDP | ratio |",
        "|---|---|---|---|",
        f"| steady-state tokens/s | {med('fedray', 'tokens_per_s'):,.0f} | {med('torchrun', 'tokens_per_s'):,.0f} "
        f"| **{thr:.3f}** |",
        f"| median step time (ms) | {med('fedray', 'median_step_ms'):.1f} | {med('torchrun', 'median_step_ms'):.1f} "
        f"| {med('fedray', 'median_step_ms') / med('torchrun', 'median_step_ms'):.3f} |",
        f"| time to first step (s) | {start_f:.1f} | {start_t:.1f} | +{start_f - start_t:.1f} s |",
    ]
    if a.gpu and "mfu" in results["fedray"][0]:
        lines.append(f"| MFU (fedray) | {med('fedray', 'mfu') * 100:.1f}% | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(results, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
