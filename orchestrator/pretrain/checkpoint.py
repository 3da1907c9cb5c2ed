"""Checkpoints that are either complete or ignored.

A checkpoint directory holds the state files and ``manifest.json``, which lists every file with
its size, the step and the world size. A checkpoint counts only if the manifest exists and every
listed file is present with the listed size, so a copy that died half-way is never loaded; the
loader falls back to the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "fedray-checkpoint-v1"
_DIR_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def write_manifest(directory: Path, step: int, world_size: int, backend: str, **extra: Any) -> None:
    """Record every file under ``directory`` with its size; written last, atomically."""
    files = {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp")
    }
    manifest = {
        "format": FORMAT,
        "step": step,
        "world_size": world_size,
        "backend": backend,
        "files": files,
        **extra,
    }
    tmp = directory / f".tmp-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    world_size: int
    backend: str
    manifest: dict[str, Any]


def verify(directory: Path) -> CheckpointInfo:
    """Return the checkpoint's info, or raise ``ValueError`` saying exactly what is wrong."""
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{directory}: no {MANIFEST} (the checkpoint was never completed)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath}: unreadable manifest ({e})") from e
    if m.get("format") != FORMAT:
        raise ValueError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
    problems = []
    for rel, size in m["files"].items():
        f = directory / rel
        if not f.is_file():
            problems.append(f"missing {rel}")
        elif f.stat().st_size != size:
            problems.append(f"{rel} has {f.stat().st_size} bytes, manifest says {size}")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} problems)" if len(problems) > 5 else ""
        )
        raise ValueError(f"{directory}: incomplete checkpoint: {shown}")
    return CheckpointInfo(directory, int(m["step"]), int(m["world_size"]), m["backend"], m)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories in ``run_dir``, newest step first."""
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in run_dir.iterdir()
        if (m := _DIR_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete(run_dir: Path, prefer: Path | None = None) -> CheckpointInfo | None:
    """The newest complete checkpoint (``prefer`` first, e.g. Ray's latest); incomplete ones are
    logged and skipped."""
    candidates = ([prefer] if prefer is not None else []) + list_checkpoints(run_dir)
    seen: set[Path] = set()
    best: CheckpointInfo | None = None
    for c in candidates:
        c = c.resolve()
        if c in seen:
            continue
        seen.add(c)
        try:
            info = verify(c)
        except ValueError as e:
            log.warning("skipping checkpoint: %s", e)
            continue
        if best is None or info.step > best.step:
            best = info
    return best
