"""Checkpoints that are either complete or ignored.

A checkpoint directory holds the state files and ``manifest.json``, which lists every file with
its size, the step and the world size. A checkpoint counts only if the manifest exists and every
listed file is present with the listed size, so a copy that died half-way is never loaded; the
loader falls back to the newest complete checkpoint.

Backends whose ranks each write part of the state (DeepSpeed ZeRO shards) write one
``manifest.rank{r}.json`` per rank instead, each listing the files that rank wrote; Ray merges the
ranks' directories. Such a checkpoint counts only when the manifests of all ranks
``0..world_size-1`` are present, agree on step and world size, and every listed file checks out.

Loading is safe separately (:func:`check_safe`, :mod:`orchestrator.pretrain.safe_load`): every
pickle file of a checkpoint must load with ``torch.load(weights_only=True)``, or the run stops
with an error naming the file (never a silent fallback to an older checkpoint).
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
_RANK_RE = re.compile(r"^manifest\.rank(\d+)\.json$")


def rank_manifest_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def _is_manifest(name: str) -> bool:
    return name == MANIFEST or bool(_RANK_RE.match(name))


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _write_manifest(directory: Path, name: str, fields: dict[str, Any]) -> None:
    """List every file under ``directory`` with its size; write ``name`` last, atomically."""
    files = {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not _is_manifest(p.name) and not p.name.startswith(".tmp")
    }
    manifest = {"format": FORMAT, **fields, "files": files}
    tmp = directory / f".tmp-{name}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, directory / name)


def write_manifest(directory: Path, step: int, world_size: int, backend: str, **extra: Any) -> None:
    """The single manifest of a checkpoint written whole by one rank (DDP)."""
    fields = {"step": step, "world_size": world_size, "backend": backend, **extra}
    _write_manifest(directory, MANIFEST, fields)


def write_rank_manifest(
    directory: Path, step: int, world_size: int, rank: int, backend: str, **extra: Any
) -> None:
    """Per-rank manifest: the files this rank wrote under ``directory`` (its own temp dir before
    Ray merges the ranks), with sizes."""
    fields = {"step": step, "world_size": world_size, "rank": rank, "backend": backend, **extra}
    _write_manifest(directory, rank_manifest_name(rank), fields)


def read_rank_manifest(directory: Path, rank: int) -> dict[str, Any]:
    """One rank's manifest (call ``verify`` first: this checks nothing)."""
    return json.loads((directory / rank_manifest_name(rank)).read_text())


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
        if any(_RANK_RE.match(p.name) for p in directory.glob("manifest.rank*.json")):
            return _verify_ranks(directory)
        raise ValueError(
            f"{directory}: no {MANIFEST} or manifest.rank*.json (the checkpoint was never completed)"
        )
    m = _read_manifest(mpath)
    _check_files(directory, m["files"])
    return CheckpointInfo(directory, int(m["step"]), int(m["world_size"]), m["backend"], m)


def _read_manifest(mpath: Path) -> dict[str, Any]:
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath}: unreadable manifest ({e})") from e
    if m.get("format") != FORMAT:
        raise ValueError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
    return m


def _verify_ranks(directory: Path) -> CheckpointInfo:
    """All ranks' manifests present and consistent, and all their files intact."""
    manifests: dict[int, dict[str, Any]] = {}
    for p in directory.glob("manifest.rank*.json"):
        if match := _RANK_RE.match(p.name):
            manifests[int(match.group(1))] = _read_manifest(p)
    first = manifests[min(manifests)]
    world, step = int(first["world_size"]), int(first["step"])
    for r, m in sorted(manifests.items()):
        if (int(m["world_size"]), int(m["step"]), m["backend"]) != (world, step, first["backend"]):
            raise ValueError(
                f"{directory}: rank {r} manifest says step {m['step']}, world size "
                f"{m['world_size']}, backend {m['backend']!r}; rank {min(manifests)} says "
                f"step {step}, world size {world}, backend {first['backend']!r} (mixed checkpoints)"
            )
    missing = sorted(set(range(world)) - set(manifests))
    extra = sorted(set(manifests) - set(range(world)))
    if missing or extra:
        raise ValueError(
            f"{directory}: incomplete checkpoint: world size {world} but "
            + (
                f"no manifest from rank(s) {missing} (their shards never arrived)"
                if missing
                else ""
            )
            + (" and " if missing and extra else "")
            + (f"unexpected manifests from rank(s) {extra}" if extra else "")
        )
    files: dict[str, int] = {}
    for r, m in sorted(manifests.items()):
        for rel, size in m["files"].items():
            if files.get(rel, size) != size:
                raise ValueError(f"{directory}: ranks disagree on the size of {rel} (rank {r})")
            files[rel] = size
    _check_files(directory, files)
    merged = {k: v for k, v in manifests[0].items() if k not in ("files", "rank")}
    merged.update(files=files, ranks=world)
    return CheckpointInfo(directory, step, world, first["backend"], merged)


def _check_files(directory: Path, files: dict[str, int]) -> None:
    problems = []
    for rel, size in files.items():
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


def check_safe(info: CheckpointInfo) -> None:
    """Raise :class:`~orchestrator.pretrain.safe_load.UnsafeCheckpointError` unless every pickle
    file of this verified checkpoint loads with ``weights_only=True`` (tensor data not read)."""
    from orchestrator.pretrain.safe_load import check_files, deepspeed_globals

    allowed = deepspeed_globals() if info.backend == "deepspeed" else ()
    check_files(info.path, sorted(info.manifest["files"]), allowed)
