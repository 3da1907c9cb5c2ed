"""Run directories: one per run, holding config.yaml, metrics.jsonl, checkpoints and the export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.config.schema import RunConfig


def resolve_run_dir(cfg: RunConfig, kind: str) -> Path:
    """``run.dir`` if given, else ``run.root/run.name`` (default name: ``<kind>-<timestamp>``)."""
    if cfg.dir:
        return Path(cfg.dir).expanduser().absolute()
    name = cfg.name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return (Path(cfg.root).expanduser() / name).absolute()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (skipping a possibly half-written last line)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_metrics(path: Path, rec: dict[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsynced (a crash never loses a written row)."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
