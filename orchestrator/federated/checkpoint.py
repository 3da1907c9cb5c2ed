"""Per-round server checkpoints: global model + strategy state + round, written atomically.

Layout: ``run_dir/checkpoints/round-000R/{global.safetensors, strategy.safetensors, state.json}``.
Each round is written to a temporary directory and renamed into place, so a directory named
``round-*`` is always complete; a crash mid-write leaves only a ``.tmp-*`` that is never loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

_ROUND = re.compile(r"^round-(\d{4,})$")


@dataclass
class ServerCheckpoint:
    round: int
    global_arrays: dict[str, np.ndarray]
    strategy_arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    """JSON: ``round``, ``strategy`` (its ``state_meta()``: name, sampling RNG), ``config_yaml``."""
    path: Path


def save(
    run_dir: Path,
    server_round: int,
    global_arrays: dict[str, np.ndarray],
    strategy_arrays: dict[str, np.ndarray],
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{server_round:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in global_arrays.items()},
        str(tmp / "global.safetensors"),
    )
    save_file(
        {k: np.ascontiguousarray(v) for k, v in strategy_arrays.items()},
        str(tmp / "strategy.safetensors"),
    )
    (tmp / "state.json").write_text(json.dumps({"round": server_round, **state}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in rounds(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rounds(run_dir: Path) -> list[Path]:
    """Complete round checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _ROUND.match(p.name))]
    return [p for _, p in sorted(found)]


def load(path: Path) -> ServerCheckpoint:
    state = json.loads((path / "state.json").read_text())
    return ServerCheckpoint(
        round=int(state["round"]),
        global_arrays=load_file(str(path / "global.safetensors")),
        strategy_arrays=load_file(str(path / "strategy.safetensors")),
        state=state,
        path=path,
    )


def latest(run_dir: Path) -> ServerCheckpoint | None:
    found = rounds(run_dir)
    return load(found[-1]) if found else None
