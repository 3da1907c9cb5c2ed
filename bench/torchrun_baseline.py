"""Baseline for bench_pretrain.py: a plain torchrun DDP loop, no Ray, no fedray code in the loop.

    torchrun --standalone --nproc_per_node=2 bench/torchrun_baseline.py --data train.npy --config cfg.json ...

Same model (built from the same HF config), same packed data, same batch, AdamW; rank 0 writes
one JSON line per step with an absolute wall-clock timestamp.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--config", required=True, help="HF model config JSON")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--micro", type=int, required=True)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(1)
    train = np.load(a.data)  # [n, block] training blocks (.npy), as fedray packs them
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = AutoConfig.for_model(**json.load(f))
    model = AutoModelForCausalLM.from_config(cfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if gpu else None
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
    rng = np.random.default_rng(0)
    out = open(a.out, "w") if rank == 0 else None  # noqa: SIM115 (closed at exit; rank 0 only)
    for step in range(a.steps):
        t0 = time.perf_counter()
        for i in range(a.accum):
            idx = rng.integers(0, len(train), size=a.micro * world)[
                rank * a.micro : (rank + 1) * a.micro
            ]
            x = torch.from_numpy(train[idx].astype(np.int64)).to(device)
            sync = contextlib.nullcontext() if i == a.accum - 1 else ddp.no_sync()
            with sync, amp:
                loss = ddp(input_ids=x, labels=x).loss
            (loss / a.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if gpu:
            torch.cuda.synchronize()
        if out:
            rec = {"step": step + 1, "loss": loss_value, "step_time": time.perf_counter() - t0}
            out.write(json.dumps({**rec, "wall_time": time.time()}) + "\n")
            out.flush()
    if out:
        out.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
