"""What ``fedray compress`` accepts, checked before torch or transformers is imported: a Hugging
Face model directory of a supported type and task, a known method, an output that is not the
input. A :class:`CompressError` names what was wrong and how to fix it (the
command exits 2, nothing written)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class CompressError(ValueError):
    """Bad input to ``fedray compress``: the message says what was wrong and how to fix it."""


METHODS = ("int8", "int4")
"""``int8``: per-channel int8 weight-only; ``int4``: group-wise int4 weight-only (torchao)."""

LINEAR_TYPES = ("llama", "gpt_bigcode")
"""Model types whose projections are ``nn.Linear``: quantized as they are."""
CONV1D_TYPES = ("gpt2",)
"""Model types whose projections are transformers' ``Conv1D`` (weight transposed): rewritten as
the equivalent ``nn.Linear`` model (:mod:`orchestrator.compress.gpt2`) before quantizing."""
SUPPORTED_TYPES = CONV1D_TYPES + LINEAR_TYPES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""One of these makes a directory's tokenizer loadable (fast, slow BPE, sentencepiece)."""

TASKS = {"ForCausalLM": "causal_lm", "LMHeadModel": "causal_lm"}
CLASSIFICATION = "ForSequenceClassification"


@dataclass(frozen=True)
class ExportInfo:
    """An export directory as its ``config.json`` describes it."""

    path: Path
    model_type: str
    architecture: str
    task: str
    """``causal_lm`` or ``classification`` (the names :mod:`clients.train` uses)."""


def task_of(architecture: str) -> str | None:
    if architecture.endswith(CLASSIFICATION):
        return "classification"
    return next((t for suffix, t in TASKS.items() if architecture.endswith(suffix)), None)


def read_export(path: str | Path) -> ExportInfo:
    """The export at ``path``, or a CompressError saying why it cannot be compressed."""
    p = Path(path).expanduser()
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CompressError(
            f"{str(p)!r} is not a Hugging Face model directory (no config.json); give the "
            "export of a run (RUN_DIR/export, written by `fedray pretrain` or `fedray simulate`) "
            "or a directory written by save_pretrained"
        )
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise CompressError(f"{str(p)!r} has a config.json but no weights (*.safetensors)")
    # Without these transformers builds an empty tokenizer silently (every text -> no tokens).
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise CompressError(
            f"{str(p)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer the model was trained with into it (tokenizer.save_pretrained(dir))"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompressError(f"{cfg_file}: not readable JSON ({e})") from e
    if cfg.get("quantization_config"):
        raise CompressError(
            f"{str(p)!r} is already quantized ({cfg['quantization_config'].get('quant_method')}); "
            "compress the full-precision export it came from"
        )
    model_type = str(cfg.get("model_type", ""))
    if model_type not in SUPPORTED_TYPES:
        raise CompressError(
            f"model type {model_type!r} ({cfg_file}) is not supported; supported: "
            f"{', '.join(SUPPORTED_TYPES)}"
        )
    arch = (cfg.get("architectures") or [""])[0]
    task = task_of(arch)
    if task is None:
        raise CompressError(
            f"architecture {arch!r} ({cfg_file}) is neither a causal LM nor a sequence "
            "classifier; fedray compresses those two"
        )
    return ExportInfo(p, model_type, arch, task)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise CompressError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return method


def default_out(export: Path, method: str) -> Path:
    """``RUN_DIR/export`` -> ``RUN_DIR/export-int8``: beside the export, where ``fedray report
    RUN_DIR`` finds it."""
    return export.with_name(f"{export.name}-{method}")


def check_out(export: Path, out: Path) -> Path:
    """``out`` may not be (or lie inside) the export, nor be a file; an existing directory is
    replaced only once the new one is complete."""
    src, dst = export.resolve(), out.expanduser().resolve()
    if dst == src or src in dst.parents:
        raise CompressError(f"--out {str(out)!r} is the export itself or inside it; choose another")
    if dst.exists() and not dst.is_dir():
        raise CompressError(f"--out {str(out)!r} is a file; give a directory path")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "config.json").is_file():
        raise CompressError(
            f"--out {str(out)!r} is a non-empty directory that is not a model export; "
            "give a new path (an earlier compressed export there is replaced)"
        )
    return dst


__all__ = [
    "CONV1D_TYPES",
    "METHODS",
    "SUPPORTED_TYPES",
    "CompressError",
    "ExportInfo",
    "check_method",
    "check_out",
    "default_out",
    "read_export",
    "task_of",
]
