"""Size on disk, held-out quality and CPU tokens/s of a model, measured the same way before and
after quantization. Quality is :func:`clients.train.evaluate`, the function sites and the
centralized baseline evaluate with (perplexity, or accuracy and macro-F1)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from clients.train import Encoded, evaluate

QUALITY_KEYS = ("eval-loss", "perplexity", "accuracy", "macro-f1")


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def quality(
    model: torch.nn.Module, rows: Encoded, task: str, num_labels: int, batch_size: int
) -> dict[str, float]:
    """Held-out loss and perplexity (causal LM) or accuracy and macro-F1 (classification)."""
    m = evaluate(model, rows, task, batch_size, num_labels if task == "classification" else 0)
    return {k: float(m[k]) for k in QUALITY_KEYS if k in m}  # type: ignore[arg-type]


def _batches(rows: Encoded, batch_size: int, device: torch.device) -> list[Encoded]:
    return [
        rows.batch(torch.arange(s, min(s + batch_size, len(rows)))).to(device)
        for s in range(0, len(rows), batch_size)
    ]


@torch.inference_mode()
def _pass_seconds(model: torch.nn.Module, batches: list[Encoded]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    if batches and batches[0].input_ids.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def tokens_per_s(
    models: Sequence[torch.nn.Module], rows: Encoded, batch_size: int, repeats: int = 5
) -> list[float]:
    """Forward-pass throughput of each model over ``rows`` (non-padding tokens per second):
    the best of ``repeats`` passes after a warm-up pass. The models take turns pass by pass,
    so a machine whose load changes during the measurement slows them alike."""
    for m in models:
        m.eval()
    batches = [_batches(rows, batch_size, next(m.parameters()).device) for m in models]
    best = [float("inf")] * len(models)
    for i in range(repeats + 1):
        for j, m in enumerate(models):
            seconds = _pass_seconds(m, batches[j])
            if i:  # pass 0 warms up (one-time set-up of kernels and caches)
                best[j] = min(best[j], seconds)
    tokens = int(rows.attention_mask.sum())
    return [tokens / s for s in best]


def relative_change(before: float, after: float) -> float:
    """``after / before - 1`` (0.01 = 1% higher)."""
    return after / before - 1.0 if before else float("nan")


__all__ = ["QUALITY_KEYS", "dir_bytes", "quality", "relative_change", "tokens_per_s"]
