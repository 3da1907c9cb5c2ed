"""``compress(export, method)``: quantize an export, measure it before and after, and write a
directory plain transformers loads (with torchao installed) plus ``compression.json``.

    read + check the export -> load it (float32) and its held-out rows -> [GPT-2: the exact
    nn.Linear rewrite] -> quantize (transformers + torchao) -> save -> reload what was saved ->
    size, quality, tokens/s before and after -> compression.json -> rename into place

Everything is written to a temporary directory beside ``out`` and renamed at the end: a failure
leaves nothing at ``out`` (an earlier export there stays until the new one is complete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.compress.inputs import (
    CONV1D_TYPES,
    CompressError,
    ExportInfo,
    check_method,
    check_out,
    default_out,
    read_export,
)

RESULT_FILE = "compression.json"
"""Written into the compressed export; ``fedray report RUN_DIR`` reads it."""
_NOISY = (
    "torchao",
    "torch.utils._pytree",
)  # import-time warnings about kernels this run never uses


@dataclass(frozen=True)
class CompressResult:
    """What ``fedray compress`` measured (also written as ``compression.json``)."""

    method: str
    library: str
    source: str
    out: str
    task: str
    model_type_before: str
    model_type_after: str
    quantized_modules: int
    linear_modules: int
    quantized_layer_bytes: int
    fp32_layer_bytes: int
    layer_ratio: float
    dir_bytes_before: int
    dir_bytes_after: int
    eval_source: str
    eval_rows: int
    threads: int
    before: dict[str, float]
    after: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temp directory beside ``out``, renamed to ``out`` when the block succeeds and removed
    when it does not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; an export is an ordinary directory
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def quiet() -> None:
    """No import-time kernel warnings, no per-file progress bars: the command prints a table."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    from datasets.utils.logging import disable_progress_bar as datasets_bars_off
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    datasets_bars_off()


def model_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM


def load_export(info: ExportInfo) -> tuple[Any, Any]:
    """The export's float32 model and its tokenizer (a pad token set for batching)."""
    import torch
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(info.path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CompressError(f"{str(info.path)!r} has no loadable tokenizer ({e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model_class(info.task).from_pretrained(
        str(info.path), local_files_only=True, dtype=torch.float32
    )
    return model.eval(), tok


def linear_source(info: ExportInfo, model: Any, probe: Any, scratch: Path) -> Path:
    """A directory the quantizer loads: the export itself, or (GPT-2) its exact ``nn.Linear``
    rewrite saved in ``scratch``."""
    if info.model_type not in CONV1D_TYPES:
        return info.path
    from orchestrator.compress.gpt2 import UnsupportedGPT2, check_same_logits, to_linear_model

    try:
        linear = to_linear_model(model)
    except UnsupportedGPT2 as e:
        raise CompressError(str(e)) from e
    check_same_logits(model, linear, probe)
    linear.save_pretrained(str(scratch))
    return scratch


def measure(
    models: tuple[Any, Any], rows: Any, task: str, num_labels: int, batch_size: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Quality and tokens/s of the model before and after quantization."""
    from orchestrator.compress.measure import quality, tokens_per_s

    speed = tokens_per_s(models, rows, batch_size)
    return tuple(  # type: ignore[return-value]
        {**quality(m, rows, task, num_labels, batch_size), "tokens_per_s": s}
        for m, s in zip(models, speed, strict=True)
    )


def compress(
    export: str | Path,
    method: str,
    out: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_rows: int = 256,
    batch_size: int = 16,
) -> CompressResult:
    """Quantize ``export`` with ``method`` into ``out`` (default: beside it, ``export-<method>``)
    and measure it; a :class:`CompressError` (bad input) leaves nothing behind."""
    info = read_export(export)
    check_method(method)
    dst = check_out(info.path, Path(out) if out else default_out(info.path, method))
    quiet()
    from orchestrator.compress.held_out import held_out_rows
    from orchestrator.compress.quantize import check_platform

    check_platform(method)
    base, tok = load_export(info)
    held_out = held_out_rows(
        info, tok, base.config, Path(eval_data) if eval_data else None, max_rows
    )
    with staging(dst) as tmp, tempfile.TemporaryDirectory(dir=dst.parent, prefix=".linear-") as s:
        result = quantize_and_measure(info, method, (base, tok), held_out, tmp, Path(s), batch_size)
        result = replace(result, out=str(dst))
        (tmp / RESULT_FILE).write_text(result.to_json() + "\n")
    return result


def quantize_and_measure(
    info: ExportInfo,
    method: str,
    loaded: tuple[Any, Any],
    held_out: tuple[Any, str],
    tmp: Path,
    scratch: Path,
    batch_size: int,
) -> CompressResult:
    """Quantize the export into ``tmp`` (GPT-2's rewrite in ``scratch``), reload what was
    written and measure it against the original model on the held-out rows."""
    import torch
    import torchao

    from orchestrator.compress.measure import dir_bytes
    from orchestrator.compress.quantize import device_for, layer_bytes, load_quantized

    (base, tok), (rows, source) = loaded, held_out
    cls = model_class(info.task)
    quantized = load_quantized(linear_source(info, base, rows.input_ids[:2], scratch), cls, method)
    counted = layer_bytes(quantized)
    if counted.modules == 0:
        raise RuntimeError(f"torchao quantized no nn.Linear module of {info.path}")
    quantized.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    del quantized
    # What a user loads; int4's tensors live on the GPU (compared there with the original).
    device = device_for(method)
    saved = cls.from_pretrained(
        str(tmp), local_files_only=True, **({} if device == "cpu" else {"device_map": device})
    ).eval()
    num_labels = int(base.config.num_labels) if info.task == "classification" else 0
    before, after = measure((base.to(device), saved), rows, info.task, num_labels, batch_size)
    return CompressResult(
        method=method,
        library=f"torchao {torchao.__version__}",
        source=str(info.path),
        out=str(tmp),
        task=info.task,
        model_type_before=info.model_type,
        model_type_after=str(saved.config.model_type),
        quantized_modules=counted.modules,
        linear_modules=counted.linear_total,
        quantized_layer_bytes=counted.quantized_bytes,
        fp32_layer_bytes=counted.fp32_bytes,
        layer_ratio=counted.ratio,
        dir_bytes_before=dir_bytes(info.path),
        dir_bytes_after=dir_bytes(tmp),
        eval_source=source,
        eval_rows=len(rows),
        threads=torch.get_num_threads(),
        before=before,
        after=after,
    )


__all__ = ["RESULT_FILE", "CompressResult", "compress", "quantize_and_measure", "staging"]
