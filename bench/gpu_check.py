"""One-GPU check of the GPU paths, in under 8 minutes: DDP pretraining with NCCL and bf16 (GPT-2
124M: tokens/s and MFU), then one federated LoRA round whose sites train on the GPU.

    python bench/gpu_check.py                    # on a machine with one CUDA GPU
    python bench/gpu_check.py --out gpu.json     # also write the numbers as JSON
    python bench/gpu_check.py --cpu-smoke        # no GPU: the same code path, tiny, on CPU/gloo

Pretraining runs ``fedray pretrain``'s own ``pretrain(job)`` (the ``pretrain-gpt2-124m`` preset,
1 worker, ``scaling.use_gpu=true`` -> NCCL, ``train.precision=auto`` -> bf16 autocast) on the
bundled demo corpus with a BPE trained on it. tokens/s is the median of what the
training loop reports per step after warm-up (also given: the wall-clock figure of
bench/bench_pretrain.py); MFU is the median of the loop's per-step MFU (orchestrator/pretrain's
formula). The federated round is the real ClientApp under an
in-process grid (orchestrator/federated/local_grid.py): 2 sites fine-tune LoRA adapters of the
same GPT-2 124M architecture on the demo tweets; the script checks that they ran on the GPU
(CUDA memory was allocated by the sites) and reports the round's wall time and eval loss.
Prints one JSON object; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from bench_pretrain import summarize  # noqa: E402  (same directory)

GPT2_124M = ["model.n_layer=12", "model.n_head=12", "model.d_model=768"]
TINY = ["model.n_layer=2", "model.n_head=2", "model.d_model=64"]


def pretrain_check(root: Path, cpu: bool, steps: int, warmup: int) -> dict[str, Any]:
    from orchestrator.config import PretrainJob, load_config
    from orchestrator.pretrain import pretrain

    size = (
        [*TINY, "data.block_size=64", "data.tokenizer.vocab_size=512", "train.micro_batch_size=4"]
        if cpu
        else [*GPT2_124M, "data.block_size=1024", "data.tokenizer.vocab_size=50257",
              "train.micro_batch_size=16"]
    )  # fmt: skip
    micro = int(size[-1].split("=")[1])
    job = load_config(
        PretrainJob,
        "pretrain-gpt2-124m",
        [
            *size,
            "data.paths=[]",  # the bundled demo corpus
            f"data.cache_dir={root / 'cache'}",
            "scaling.num_workers=1",
            f"scaling.use_gpu={'false' if cpu else 'true'}",
            "scaling.cpus_per_worker=1",
            f"train.global_batch_size={micro}",
            f"train.max_steps={steps}",
            "train.warmup_steps=2",
            "train.log_every=10",
            "train.eval_every=0",
            f"checkpoint.every_steps={steps}",
            "run.max_failures=0",
            f"run.root={root / 'runs'}",
            "run.name=gpu-check",
        ],
    )
    t0 = time.time()
    result = pretrain(job)
    tokens_per_step = job.train.global_batch_size * job.data.block_size
    stats = summarize(result.metrics, t0, tokens_per_step, warmup)
    # Wall-clock tokens/s uses the sink's receive times, which bunch up when the machine is
    # busy; the loop's own per-step figure (timed on the worker, CUDA-synchronised) is primary.
    stats["tokens_per_s_wall"] = stats.pop("tokens_per_s")
    per_step = sorted(m["tokens_per_s"] for m in result.metrics if m.get("step", 0) > warmup)
    stats["tokens_per_s"] = per_step[len(per_step) // 2]
    return {
        "backend": "gloo/fp32" if cpu else "nccl/bf16",
        "params_m": round(
            json.loads((result.run_dir / "summary.json").read_text())["params"] / 1e6, 1
        ),
        "tokens_per_step": tokens_per_step,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
        "wall_s": round(time.time() - t0, 1),
    }


def lora_round_check(root: Path, cpu: bool) -> dict[str, Any]:
    import torch

    from clients.client_app import app as client_app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated

    ensure_task_identity()
    job = load_config(
        FederatedJob,
        "simulate-demo",
        [
            "model.path=null",  # a model of the size below (the preset bundles a pretrained one)
            *(TINY if cpu else GPT2_124M),
            "task.kind=causal_lm",
            "task.max_length=64",
            "data.tokenizer.vocab_size=512" if cpu else "data.tokenizer.vocab_size=8192",
            f"data.cache_dir={root / 'cache'}",
            "finetune.mode=lora",
            "finetune.local_steps=20",
            "train.micro_batch_size=16",
            "federation.num_sites=2",
            "federation.min_sites=2",
            "federation.num_rounds=1",
            "partition.kind=iid",
            "partition.max_examples_per_site=400",
        ],
    )
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 2} for i in range(2)])
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = run_federated(grid, job, root / "fed-run")
    wall = time.time() - t0
    losses = result.metric("eval-loss")
    out: dict[str, Any] = {
        "sites": 2,
        "round_wall_s": round(wall, 1),
        "eval_loss_round0": losses[0],
        "eval_loss_round1": losses[-1],
    }
    if not cpu:
        out["site_peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: tiny model, CPU, gloo")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (60 GPU, 8 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of tokens/s")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--part", choices=["all", "pretrain", "federated"], default="all")
    ns = ap.parse_args()
    import torch

    cpu = ns.cpu_smoke
    if not cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu-smoke for a dry check", file=sys.stderr)
        return 2
    steps = ns.steps or (8 if cpu else 60)
    warmup = ns.warmup or (2 if cpu else 10)
    report: dict[str, Any] = {
        "device": "cpu (smoke)" if cpu else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fedray-gpu-check-") as tmp:
        if ns.part in ("all", "pretrain"):
            report["pretrain"] = pretrain_check(Path(tmp), cpu, steps, warmup)
        if ns.part in ("all", "federated"):
            report["federated_lora_round"] = lora_round_check(Path(tmp), cpu)
    report["total_wall_s"] = round(time.time() - t0, 1)
    failures = []
    if not cpu and "pretrain" in report:
        mfu = report["pretrain"].get("mfu")
        if mfu is None or not 0 < mfu < 1:
            failures.append(f"MFU {mfu!r} not in (0, 1)")
    fed = report.get("federated_lora_round")
    if not cpu and fed is not None and fed.get("site_peak_cuda_mib", 0) <= 0:
        failures.append("the federated sites allocated no CUDA memory")
    if report["total_wall_s"] > 480:
        failures.append(f"took {report['total_wall_s']} s (> 8 min)")
    report["failures"] = failures
    text = json.dumps(report, indent=1)
    print(text)
    if ns.out:
        ns.out.write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
