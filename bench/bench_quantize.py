"""Quantized exports (``fedray compress``): size, held-out quality and CPU tokens/s before and
after, for the bundled pretrained GPT-2 and for a federated classifier fine-tuned from it.

    python bench/bench_quantize.py [--max-rows N] [--rounds N] [--out bench/results/quantize.json]

1. The bundled pretrained tiny GPT-2 (``demo:tweets-gpt2``) -> ``compress(..., "int8")``,
   perplexity on the demo's labelled tweets, which pretraining never saw (DATA.md).
2. A federated classifier: the default demo federation (``simulate-demo``: 4 sites split by
   topic, FedAvg from the same pretrained GPT-2) run in one process on a LocalGrid (the real
   ClientApp and server loop, no Ray), its ``RUN_DIR/export`` -> ``compress(..., "int8")``,
   accuracy and macro-F1 on every site's held-out rows (the rows the run evaluated on).
3. int4: ``compress(..., "int4")`` is refused on a machine without a CUDA GPU (torchao's
   serializable int4 layouts have CUDA kernels only); its quality is measured here anyway with
   torchao's CPU int4 weights (``IntxWeightOnlyConfig``: the same int4 grid, group 32, held
   unpacked in int8) and its size computed for the packed CUDA layout (two codes a byte, a
   bf16 scale and zero point per group of 32: tinygemm's).
4. Tokens/s at a larger shape: a GPT-2-small-shaped model (12 layers, d 768, random weights,
   the demo vocabulary) before and after int8, on the same held-out rows (speed only).

Each before/after pair is measured in the same process on the same rows; tokens/s alternate
between the two models pass by pass (best of 5 each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.compress.gpt2 import to_linear_model
from orchestrator.compress.inputs import CompressError
from orchestrator.compress.measure import quality, tokens_per_s
from orchestrator.compress.pipeline import compress, load_export, quiet
from orchestrator.compress.quantize import layer_bytes
from orchestrator.data.sources import DEMO_LABELLED, demo_path

INT4_GROUP = 32


def demo_gpt2(tmp: Path, max_rows: int) -> dict[str, Any]:
    shutil.copytree(demo_path("tweets-gpt2"), tmp / "demo" / "export")
    r = compress(
        tmp / "demo" / "export", "int8", eval_data=demo_path(DEMO_LABELLED), max_rows=max_rows
    )
    return json.loads(r.to_json())


def federated_classifier(tmp: Path, rounds: int, max_rows: int) -> dict[str, Any]:
    from clients.client_app import app as client_app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated

    ensure_task_identity()
    run = tmp / "fed"
    overrides = [f"run.dir={run}", f"federation.num_rounds={rounds}", f"data.cache_dir={tmp}/cache"]
    job = load_config(FederatedJob, None, overrides, default_preset="simulate-demo")
    n = job.federation.num_sites
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])
    t0 = time.perf_counter()
    run_federated(grid, job, run)
    fed_s = time.perf_counter() - t0
    return {
        **json.loads(compress(run / "export", "int8", max_rows=max_rows).to_json()),
        "fed_s": fed_s,
    }


def int4_refusal(export: Path) -> str:
    try:
        compress(export, "int4", export.with_name("export-int4"))
    except CompressError as e:
        return str(e)
    return "ran (a CUDA GPU is present)"


def packed_int4_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of the quantizable layers packed as int4 (two codes a byte, bf16 scale + zero per
    group; fp32 bias) and the same layers in fp32."""
    q = f = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name not in ("lm_head", "score"):
            n, k = m.weight.shape
            bias = 0 if m.bias is None else n * 4
            q += n * k // 2 + n * (k // INT4_GROUP) * 2 * 2 + bias
            f += n * k * 4 + bias
    return q, f


def int4_cpu(export: Path, eval_data: Path | None, max_rows: int) -> dict[str, Any]:
    """int4 weight quality via torchao's CPU int4 (unpacked) weights; packed size computed."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from orchestrator.compress.held_out import held_out_rows
    from orchestrator.compress.inputs import read_export

    info = read_export(export)
    base, tok = load_export(info)
    rows, _ = held_out_rows(info, tok, base.config, eval_data, max_rows)
    linear = to_linear_model(base) if info.model_type == "gpt2" else base
    packed, fp32 = packed_int4_bytes(linear)
    num_labels = int(base.config.num_labels) if info.task == "classification" else 0
    before = quality(base, rows, info.task, num_labels, 16)
    cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP))
    quantize_(
        linear,
        cfg,
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn not in ("lm_head", "score"),
    )
    return {
        "quantized_modules": layer_bytes(linear).modules,
        "packed_layer_bytes": packed,
        "fp32_layer_bytes": fp32,
        "packed_layer_ratio": packed / fp32,
        "before": before,
        "after": quality(linear, rows, info.task, num_labels, 16),
    }


def large_speed(max_rows: int) -> dict[str, Any]:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from transformers import AutoTokenizer, GPTBigCodeConfig, GPTBigCodeForCausalLM

    from clients.train import encode
    from orchestrator.data.sources import read_columns

    tok = AutoTokenizer.from_pretrained(str(demo_path("tweets-gpt2")))
    texts = list(read_columns(str(demo_path(DEMO_LABELLED)), "text", "label", "")[0][:max_rows])
    rows = encode(tok, texts, 48)
    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(
        vocab_size=len(tok), n_positions=64, n_embd=768, n_layer=12, n_head=12, multi_query=False
    )
    base = GPTBigCodeForCausalLM(cfg).eval()
    q = GPTBigCodeForCausalLM(cfg).eval()
    q.load_state_dict(base.state_dict())
    quantize_(
        q,
        Int8WeightOnlyConfig(),
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head",
    )
    before, after = tokens_per_s([base, q], rows, 16)
    lb = layer_bytes(q)
    return {
        "shape": "12 layers, d 768, 12 heads, vocab 2048",
        "rows": len(rows),
        "before_tokens_per_s": before,
        "after_tokens_per_s": after,
        "quantized_modules": lb.modules,
        "layer_ratio": lb.ratio,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-rows", type=int, default=1000, help="held-out rows per measurement")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (the preset: 20)")
    p.add_argument("--out", default="bench/results/quantize.json")
    a = p.parse_args()
    quiet()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res["demo_gpt2_int8"] = demo_gpt2(tmp, a.max_rows)
        res["federated_int8"] = federated_classifier(tmp, a.rounds, a.max_rows)
        res["int4_refusal"] = int4_refusal(tmp / "demo" / "export")
        res["demo_gpt2_int4_cpu"] = int4_cpu(
            tmp / "demo" / "export", demo_path(DEMO_LABELLED), a.max_rows
        )
        res["federated_int4_cpu"] = int4_cpu(tmp / "fed" / "export", None, a.max_rows)
        res["large_speed_int8"] = large_speed(min(a.max_rows, 64))
    res["wall_s"] = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
