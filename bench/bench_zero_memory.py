"""Per-worker memory and tokens/s: DDP vs DeepSpeed ZeRO-1/2/3 (+ CPU offload), one invocation.

    python bench/bench_zero_memory.py             # CPU: 2 Ray Train workers over gloo, fp32
    python bench/bench_zero_memory.py --gpu       # GPU: all visible GPUs, NCCL, bf16

Every configuration trains the same GPT-2 (same init, same random token batches, same global
batch) with fedray's own backends (``make_backend``: DDPBackend / DeepSpeedBackend, torch AdamW)
inside Ray Train workers, one ``fit()`` per configuration. DeepSpeed gets DDP-sized buckets
through ``deepspeed.config_file`` (``--ds-bucket``; 0 = DeepSpeed's 5e8-element defaults).
Each worker reports, minus what was allocated before the model was built:
- ``held``: allocated after the timed steps, i.e. the model states that live between steps
  (parameters, optimizer states, persistent buffers): what ZeRO partitions;
- ``peak``: the most allocated during the timed steps (adds gradients, activations, gathers).
  GPU: ``torch.cuda.memory_allocated`` / ``max_memory_allocated``. CPU has no such counter: a
  thread samples glibc's ``mallinfo2()`` (bytes handed out by malloc) every millisecond;
- resident memory (RSS) after the steps, and the lifetime peak RSS (init included: fedray builds
  the full model on every worker before DeepSpeed partitions it);
- tokens/s over the timed steps (after ``--warmup`` steps).
``expected_bytes`` gives the ZeRO paper's per-worker accounting adapted to the device's dtypes.
Results are appended to bench/results/deepspeed.md (which explains them).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MB = 2**20
BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")

# name -> overrides of the PretrainJob (everything else identical)
CONFIGS: dict[str, list[str]] = {
    "DDP": ["backend=ddp"],
    "ZeRO-1": ["backend=deepspeed", "deepspeed.zero_stage=1"],
    "ZeRO-2": ["backend=deepspeed", "deepspeed.zero_stage=2"],
    "ZeRO-3": ["backend=deepspeed", "deepspeed.zero_stage=3"],
    "ZeRO-2 + offload opt": [
        "backend=deepspeed",
        "deepspeed.zero_stage=2",
        "deepspeed.offload_optimizer=true",
    ],
    "ZeRO-3 + offload opt+params": [
        "backend=deepspeed",
        "deepspeed.zero_stage=3",
        "deepspeed.offload_optimizer=true",
        "deepspeed.offload_params=true",
    ],
    # train.activation_checkpointing: activations recomputed in backward (lower peak, slower)
    "DDP + act. ckpt": ["backend=ddp", "train.activation_checkpointing=true"],
    "ZeRO-3 + act. ckpt": [
        "backend=deepspeed",
        "deepspeed.zero_stage=3",
        "train.activation_checkpointing=true",
    ],
}


def expected_bytes(name: str, psi: int, n: int, gpu: bool) -> tuple[float, float] | None:
    """(held between steps, model states + gradients at the peak) per worker, in bytes.

    ZeRO paper accounting (mixed-precision Adam, Psi parameters, N workers): parameters p*Psi,
    gradients p*Psi, optimizer K*Psi with K = 12 (fp32 master copy + two Adam moments); stage 1
    partitions K, stage 2 also the gradients, stage 3 also the parameters. On GPU DeepSpeed holds
    bf16 parameters/gradients (p = 2). On CPU everything is fp32 (p = 4) and DeepSpeed still keeps
    its fp32 master partition, so K stays 12. Between steps the gradients are freed
    (``zero_grad(set_to_none)``); DDP keeps its fp32 gradient buckets (4 Psi) and fp32 params
    (autocast on GPU), so DDP = 16 Psi held, 20 Psi at the peak, on both devices.
    Offloaded states leave the GPU; on CPU nothing moves, so no expectation is printed."""
    if "offload" in name:
        return None
    if name.startswith("DDP"):
        return 16.0 * psi, 20.0 * psi
    stage = int(name.split("-")[1][0])
    p, k = (2 if gpu else 4), 12
    params = p * psi / (n if stage == 3 else 1)
    grads = p * psi / (n if stage >= 2 else 1)
    held = params + k * psi / n
    return held, held + grads


class MemoryProbe:
    """Allocated bytes (CUDA counters, or glibc mallinfo2 on CPU) and resident bytes (RSS), now
    and their peaks since ``reset`` (a thread samples every millisecond)."""

    def __init__(self, device: Any):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.peak_alloc = self.peak_rss = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        if not self.cuda:
            # Defined here, not at class level: Ray pickles this class by value (script module).
            class MallInfo2(ctypes.Structure):
                _fields_ = [
                    (n, ctypes.c_size_t)
                    for n in [
                        *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
                        *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
                    ]
                ]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = MallInfo2
            self._mallinfo2 = libc.mallinfo2
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def alloc(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.memory_allocated())
        m = self._mallinfo2()
        return int(m.uordblks + m.hblkhd)  # heap in use + mmapped chunks (large tensors)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_rss = max(self.peak_rss, self.rss())
            if not self.cuda:
                self.peak_alloc = max(self.peak_alloc, self.alloc())

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        self.peak_alloc, self.peak_rss = self.alloc(), self.rss()

    def max_alloc(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        return max(self.peak_alloc, self.alloc())

    def max_rss(self) -> int:
        return max(self.peak_rss, self.rss())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def worker(cfg: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from orchestrator.pretrain.loop import autocast_context, make_backend, worker_model

    job = cfg["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(job.scaling.cpus_per_worker)
    if job.backend == "deepspeed":
        import deepspeed  # noqa: F401  (its import is not model memory: keep it out of the baseline)
    probe = MemoryProbe(device)
    base, base_rss = probe.alloc(), probe.rss()
    torch.manual_seed(0)
    model = worker_model(job, cfg["hf_config"])  # the workers' model (activation checkpointing)
    n_params = sum(p.numel() for p in model.parameters())
    backend = make_backend(job, model, rank, world)
    after_init = probe.alloc() - base
    accum, micro, block = job.grad_accum_steps, job.train.micro_batch_size, job.data.block_size
    rng = np.random.default_rng(1000 + rank)
    batches = [
        torch.from_numpy(rng.integers(0, cfg["vocab"], size=(micro, block))).to(device)
        for _ in range(accum)
    ]
    losses, t0 = [], 0.0
    for step in range(cfg["warmup"] + cfg["steps"]):
        if step == cfg["warmup"]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            probe.reset()
            t0 = time.perf_counter()
        for a, x in enumerate(batches):
            with backend.no_sync(a < accum - 1), autocast_context(job, device):
                loss = backend.model(input_ids=x, labels=x).loss
            backend.backward(loss / accum)
        backend.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {
        "rank": rank,
        "params": n_params,
        "after_init": after_init,
        "alloc_held": probe.alloc() - base,
        "alloc_peak": probe.max_alloc() - base,
        "rss_held": probe.rss() - base_rss,
        "rss_peak": probe.max_rss() - base_rss,
        "rss_lifetime_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tokens_per_s": cfg["steps"] * job.train.global_batch_size * block / elapsed,
        "step_ms": 1e3 * elapsed / cfg["steps"],
        "last_loss": losses[-1],
    }
    probe.close()
    Path(cfg["out"], f"rank{rank}.json").write_text(json.dumps(out))


def run_config(
    name: str, overrides: list[str], a: argparse.Namespace, work: Path, ds_json: Path | None
) -> list[dict]:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.config import PretrainJob, load_config
    from orchestrator.models import hf_config

    job = load_config(
        PretrainJob,
        None,
        [
            f"model.n_layer={a.n_layer}",
            f"model.d_model={a.d_model}",
            f"model.n_head={max(1, a.d_model // 64)}",
            f"data.block_size={a.block}",
            f"train.micro_batch_size={a.micro}",
            f"train.global_batch_size={a.micro * a.workers * a.accum}",
            f"scaling.num_workers={a.workers}",
            f"scaling.use_gpu={str(a.gpu).lower()}",
            f"scaling.cpus_per_worker={a.cpus_per_worker}",
            "fault.rank=0",
            *overrides,
            *(
                [f"deepspeed.config_file={ds_json}"]
                if ds_json and "deepspeed" in str(overrides)
                else []
            ),
        ],
        default_preset="pretrain-tiny",
    )
    cfg = hf_config(job.model, a.vocab, a.block, 0)
    out = work / name.replace(" ", "_").replace("+", "")
    out.mkdir(parents=True)
    TorchTrainer(
        worker,
        train_loop_config={
            "job": job,
            "hf_config": cfg.to_dict(),
            "vocab": a.vocab,
            "warmup": a.warmup,
            "steps": a.steps,
            "out": str(out),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=a.workers,
            use_gpu=a.gpu,
            resources_per_worker={"CPU": a.cpus_per_worker, **({"GPU": 1} if a.gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if a.gpu else "gloo"),
        run_config=ray.train.RunConfig(name=out.name, storage_path=str(work / "ray")),
    ).fit()
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def activation_checkpointing_in_process(a: argparse.Namespace) -> str:
    """``--act-ckpt-only``: one process, no Ray: the peak allocated during forward + backward of
    the workers' model (``loop.worker_model``) without and with ``train.activation_checkpointing``
    (a quick measurement of what it saves; the Ray configs "... + act. ckpt" measure it per
    backend)."""
    import numpy as np
    import torch

    from orchestrator.config import PretrainJob, load_config
    from orchestrator.models import hf_config
    from orchestrator.pretrain.loop import worker_model

    torch.set_num_threads(a.cpus_per_worker)
    device = torch.device("cuda" if a.gpu else "cpu")
    rows = []
    for ac in (False, True):
        job = load_config(
            PretrainJob,
            None,
            [
                f"model.n_layer={a.n_layer}",
                f"model.d_model={a.d_model}",
                f"model.n_head={max(1, a.d_model // 64)}",
                f"data.block_size={a.block}",
                f"train.activation_checkpointing={str(ac).lower()}",
            ],
            default_preset="pretrain-tiny",
        )
        probe = MemoryProbe(device)
        torch.manual_seed(0)
        model = worker_model(job, hf_config(job.model, a.vocab, a.block, 0).to_dict()).to(device)
        model.train()
        x = torch.from_numpy(
            np.random.default_rng(0).integers(0, a.vocab, size=(a.micro, a.block))
        ).to(device)
        times = []
        for step in range(a.warmup + a.steps):
            if step == a.warmup:
                probe.reset()
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            model(input_ids=x, labels=x).loss.backward()
            times.append(time.perf_counter() - t)
        # the gradients (one model size) are held after backward either way: report them apart
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
        held = probe.alloc()
        rows.append((ac, probe.max_alloc() - held, grads, statistics.mean(times[a.warmup :])))
        probe.close()
        del model
    off, on = rows
    return (
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} | activation checkpointing, one process | "
        f"{'GPU ' + torch.cuda.get_device_name(0) if a.gpu else f'CPU, {a.cpus_per_worker} thread(s)'}"
        f" | gpt2 {a.n_layer}L d{a.d_model} vocab {a.vocab} | block {a.block} micro {a.micro}\n\n"
        "| train.activation_checkpointing | peak above held during fwd+bwd MB | gradients MB | "
        "fwd+bwd s |\n|---|---|---|---|\n"
        + "".join(
            f"| {str(ac).lower()} | {peak / MB:,.0f} | {g / MB:,.0f} | {t:.2f} |\n"
            for ac, peak, g, t in rows
        )
        + f"\nsaved: {(off[1] - on[1]) / MB:,.0f} MB ({1 - on[1] / off[1]:.0%} of the peak above "
        f"held), time x{on[3] / off[3]:.2f}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="default: 2 on CPU, all GPUs on GPU")
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--ds-bucket",
        type=int,
        default=6_553_600,
        help="elements per DeepSpeed reduce/allgather/prefetch bucket (default 25 MiB of fp32, "
        "like DDP's bucket cap); 0 = DeepSpeed's defaults (5e8)",
    )
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of: {list(CONFIGS)}"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "deepspeed.md"))
    ap.add_argument(
        "--act-ckpt-only",
        action="store_true",
        help="one process, no Ray: peak memory of forward+backward without/with activation "
        "checkpointing",
    )
    a = ap.parse_args()
    if a.act_ckpt_only:
        text = activation_checkpointing_in_process(a)
        print(text)
        with open(a.out, "a") as f:
            f.write(text)
        return

    import torch

    from orchestrator.cluster import local_ray

    a.workers = a.workers or (torch.cuda.device_count() if a.gpu else 2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="fedray-zero-bench-"))
    names = [n.strip() for n in a.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")

    ds_json = None
    if a.ds_bucket:
        # DeepSpeed's default buckets (5e8 elements: 2 GB in fp32) dwarf a model of this size;
        # use DDP-sized buckets (its default cap is 25 MB) so the table shows model states.
        ds_json = work / "ds_buckets.json"
        zero = {k: a.ds_bucket for k in BUCKET_KEYS}
        ds_json.write_text(json.dumps({"zero_optimization": zero}))
    results: dict[str, list[dict]] = {}
    t_all = time.time()
    # The embedded Ray `fedray pretrain` starts (never joins or queries another cluster here).
    with local_ray(a.workers * a.cpus_per_worker, log_to_driver=False):
        for name in names:
            t = time.time()
            results[name] = run_config(name, CONFIGS[name], a, work, ds_json)
            print(f"{name}: {time.time() - t:.0f} s", json.dumps(results[name]), flush=True)

    psi = results[names[0]][0]["params"]
    ddp = results.get("DDP")

    def mean(rs: list[dict], key: str) -> float:
        return statistics.mean(r[key] for r in rs)

    device = torch.cuda.get_device_name(0) if a.gpu else f"CPU ({os.cpu_count()} cores), fp32"
    # What ZeRO saves: device memory on GPU (allocator counters); on CPU resident memory, since
    # malloc'd-but-untouched buffers (DeepSpeed's 5e8-element buckets) cost address space only.
    lines = [
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} | {device} | {a.workers} workers | gpt2 "
        f"{a.n_layer}L d{a.d_model} vocab {a.vocab} (Psi = {psi / 1e6:.1f}M params) | block "
        f"{a.block} micro {a.micro} accum {a.accum} | {a.steps} timed steps | DeepSpeed buckets "
        f"{a.ds_bucket or 'default'} | whole run {time.time() - t_all:.0f} s\n",
        "Per worker (mean of workers), MB = 2^20 bytes, minus the worker's memory before the model "
        "was built. held: allocated after the timed steps; peak: most allocated during them "
        + ("(torch.cuda counters)" if a.gpu else "(glibc mallinfo2, sampled every ms)")
        + "; expected: see expected_bytes(); RSS held: resident after the steps; init RSS: "
        "lifetime peak resident of the worker (absolute, includes building the full model).\n",
        "| config | held MB | expected held MB | held vs DDP | peak MB | expected states+grads MB "
        "| RSS held MB | init RSS MB | tokens/s | tokens/s vs DDP | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        exp = expected_bytes(name, psi, a.workers, a.gpu)
        held = mean(rs, "alloc_held")
        cells = [
            name,
            f"{held / MB:,.0f}",
            f"{exp[0] / MB:,.0f}" if exp else "-",
            f"{held / mean(ddp, 'alloc_held'):.2f}" if ddp else "-",
            f"{mean(rs, 'alloc_peak') / MB:,.0f}",
            f"{exp[1] / MB:,.0f}" if exp else "-",
            f"{mean(rs, 'rss_held') / MB:,.0f}",
            f"{mean(rs, 'rss_lifetime_peak') / MB:,.0f}",
            f"{mean(rs, 'tokens_per_s'):,.0f}",
            f"{mean(rs, 'tokens_per_s') / mean(ddp, 'tokens_per_s'):.2f}" if ddp else "-",
            f"{mean(rs, 'last_loss'):.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(text)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"raw results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
