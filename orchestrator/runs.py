"""Run directories: one per run, holding config.yaml, metrics.jsonl, checkpoints and the export."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.config.schema import RunConfig


def resolve_run_dir(cfg: RunConfig, kind: str) -> Path:
    """``run.dir`` if given, else ``run.root/run.name`` (default name: ``<kind>-<timestamp>``)."""
    if cfg.dir:
        return Path(cfg.dir).expanduser().absolute()
    name = cfg.name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return (Path(cfg.root).expanduser() / name).absolute()
