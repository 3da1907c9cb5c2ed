"""The compressed exports of a run in ``fedray report``: each ``RUN_DIR/*/compression.json``
that ``fedray compress`` wrote (by default ``RUN_DIR/export-int8`` beside ``RUN_DIR/export``),
as one table of size, held-out quality and tokens/s before and after. A compressed export
named instead of its run (``fedray report /tmp/fed-int8``, written with ``--out``) is reported
with the run its export came from."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULT_FILE = "compression.json"  # orchestrator.compress.pipeline.RESULT_FILE (no torch here)
QUALITY = ("perplexity", "accuracy", "macro-f1")


def load_compressions(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The compression records found in ``run_dir``'s subdirectories, and warnings for the
    unreadable ones."""
    found, warnings = [], []
    for f in sorted(run_dir.glob(f"*/{RESULT_FILE}")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            warnings.append(f"{f}: not readable JSON ({e}); ignored")
            continue
        if isinstance(rec, dict) and isinstance(rec.get("before"), dict):
            found.append({**rec, "dir": f.parent.name, "path": str(f.parent.resolve())})
        else:
            warnings.append(f"{f}: not a fedray compress record; ignored")
    return found, warnings


def compressed_export(path: Path) -> tuple[Path | None, dict[str, Any]] | None:
    """For a ``fedray compress`` output named on the command line (``compression.json``, no
    ``metrics.jsonl``): the run directory of the export it came from (None if that export is
    not in one) and its record; None for any other path."""
    f = path / RESULT_FILE
    if not f.is_file() or (path / "metrics.jsonl").exists():
        return None
    try:
        rec = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # reported as "not a run directory"
    if not isinstance(rec, dict) or not isinstance(rec.get("before"), dict):
        return None
    run = Path(str(rec.get("source", ""))).parent
    found = run if rec.get("source") and (run / "metrics.jsonl").is_file() else None
    return found, {**rec, "dir": str(path), "path": str(path.resolve())}


def with_record(records: list[dict[str, Any]], rec: dict[str, Any]) -> list[dict[str, Any]]:
    """``records`` plus ``rec`` unless it is already there (the same directory)."""
    return records if any(r["path"] == rec["path"] for r in records) else [*records, rec]


def _mib(n: Any) -> str:
    return f"{n / 2**20:.2f}" if isinstance(n, (int, float)) else "-"


def _pair(rec: dict[str, Any], key: str, fmt: str) -> str:
    a, b = rec["before"].get(key), (rec.get("after") or {}).get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "-"
    return f"{a:{fmt}} &rarr; {b:{fmt}}"


def compression_table(records: Sequence[dict[str, Any]]) -> str:
    """HTML: one row per compressed export (before &rarr; after)."""
    if not records:
        return ""
    quality = [k for k in QUALITY if any(k in r["before"] for r in records)]
    head = ["export", "method", "quantized modules", "layer bytes vs fp32", "size MiB"]
    head += [*quality, "tokens/s (CPU)"]
    rows = []
    for r in records:
        cells = [
            html.escape(str(r["dir"])),
            html.escape(str(r.get("method", "-"))),
            f"{r.get('quantized_modules', '-')} of {r.get('linear_modules', '-')}",
            f"{r['layer_ratio']:.3f}x" if isinstance(r.get("layer_ratio"), float) else "-",
            f"{_mib(r.get('dir_bytes_before'))} &rarr; {_mib(r.get('dir_bytes_after'))}",
            *(_pair(r, k, ".4f") for k in quality),
            _pair(r, "tokens_per_s", ",.0f"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return (
        "<h3>Compressed exports</h3><table>" + header + "".join(rows) + "</table>"
        "<p><small>From <code>fedray compress</code> (compression.json in each directory): "
        "held-out quality and forward-pass tokens/s measured before &rarr; after on the same "
        "rows; layer bytes: the quantized layers' codes, scales and biases against the same "
        "layers in float32.</small></p>"
    )


__all__ = ["compressed_export", "compression_table", "load_compressions", "with_record"]
