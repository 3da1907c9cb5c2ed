"""``fedray compress EXPORT --method int8|int4 [--out DIR] [--eval-data FILE]``: a quantized copy
of a Hugging Face export (:func:`orchestrator.compress.pipeline.compress`), measured before and
after on held-out rows: size on disk, perplexity or accuracy/macro-F1, CPU tokens/s.

    fedray compress runs/pretrain-1/export --method int8          # -> runs/pretrain-1/export-int8
    fedray compress runs/fed-1/export --method int8 --out /tmp/fed-int8
    fedray compress my-model/ --method int8 --eval-data held_out.csv

Exit codes: 0 written; 2 bad input (not an HF directory, an unsupported model type or task, an
unknown method, int4 where this machine cannot run it, no held-out data, torchao missing):
one ``config error:`` line, nothing written at ``--out``; 1 a failure while running (nothing
written at ``--out`` either).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.commands.common import EXIT_OK, config_error, failed, out, parse, stoppable

HELP = "quantized copy of an export (int8/int4 weight-only), measured before and after"
INSTALL = "pip install 'fedray[compress]' (or: pip install torchao==0.18.0)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray compress",
        description="Weight-only quantization (torchao) of a Hugging Face export; prints size on "
        "disk, held-out quality and CPU tokens/s before and after.",
        epilog="Default --out: beside the export, EXPORT-METHOD (RUN_DIR/export -> "
        "RUN_DIR/export-int8), where `fedray report RUN_DIR` finds it.",
    )
    p.add_argument("export", metavar="EXPORT", help="model directory (RUN_DIR/export)")
    p.add_argument("--method", required=True, choices=["int8", "int4"], help="weight format")
    p.add_argument("--out", metavar="DIR", help="output directory (replaced only when complete)")
    p.add_argument(
        "--eval-data",
        metavar="FILE",
        help="held-out rows (text [+ label] columns, or a .txt file); default: the held-out "
        "rows of the run the export came from (RUN_DIR/config.yaml)",
    )
    p.add_argument("--max-rows", type=int, default=256, help="held-out rows measured (256)")
    return p


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def summary(r: Any) -> str:
    """The before/after table printed when the export is written."""
    keys = [k for k in ("perplexity", "accuracy", "macro-f1", "eval-loss") if k in r.before]
    rows = [("size on disk", _mib(r.dir_bytes_before), _mib(r.dir_bytes_after))]
    rows += [(k, f"{r.before[k]:.4f}", f"{r.after[k]:.4f}") for k in keys]
    rows.append(
        ("tokens/s (CPU)", f"{r.before['tokens_per_s']:,.0f}", f"{r.after['tokens_per_s']:,.0f}")
    )
    lines = [f"{'':<16} {'before':>14} {'after':>14}"]
    lines += [f"{a:<16} {b:>14} {c:>14}" for a, b, c in rows]
    arch = (
        f" ({r.model_type_before} -> {r.model_type_after}: nn.Linear projections)"
        if r.model_type_before != r.model_type_after
        else ""
    )
    lines.append(
        f"quantized {r.quantized_modules} of {r.linear_modules} nn.Linear modules{arch}; their "
        f"bytes {_mib(r.quantized_layer_bytes)} vs {_mib(r.fp32_layer_bytes)} fp32 "
        f"({r.layer_ratio:.3f}x, scales counted)"
    )
    lines.append(f"held-out rows: {r.eval_rows} from {r.eval_source}; {r.threads} CPU threads")
    lines.append(f"compressed export: {r.out} ({r.library})")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    ns = parse(parser(), argv)
    from orchestrator.compress.inputs import CompressError, check_out, default_out, read_export

    try:  # bad input answers before torch is imported
        info = read_export(ns.export)
        check_out(info.path, Path(ns.out) if ns.out else default_out(info.path, ns.method))
    except CompressError as e:
        return config_error(e)
    if ns.max_rows < 1:
        return config_error(f"--max-rows {ns.max_rows}: give a positive number of rows")
    if importlib.util.find_spec("torchao") is None:
        return config_error(f"fedray compress needs torchao, which is not installed: {INSTALL}")
    return stoppable(lambda: _run(ns))


def _run(ns: argparse.Namespace) -> int:
    from orchestrator.compress.inputs import CompressError
    from orchestrator.compress.pipeline import compress

    try:
        result = compress(ns.export, ns.method, ns.out, ns.eval_data, ns.max_rows)
    except CompressError as e:
        return config_error(e)
    except (OSError, RuntimeError) as e:
        return failed(f"compressing {ns.export} failed: {e}")
    out.print(summary(result), markup=False, soft_wrap=True)
    return EXIT_OK


__all__ = ["HELP", "main", "parser", "summary"]
