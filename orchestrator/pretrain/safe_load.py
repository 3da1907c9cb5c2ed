"""Load checkpoint files without running code from them.

A checkpoint on shared storage is only as trustworthy as everyone who can write there, and a
pickle may call any importable function when it is loaded. Every checkpoint file fedray reads
goes through ``torch.load(..., weights_only=True)``: tensors, numbers, strings and plain
containers only, plus the few DeepSpeed classes listed in :func:`deepspeed_globals` (an enum
and the loss scaler's plain attributes). Anything else is refused with
:class:`UnsafeCheckpointError` naming the file, before any training starts.

What fedray writes fits this: the RNG states are stored as tensors and ints (see
``loop.rng_state``), not as numpy objects.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.loader import ConfigError


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file holds objects that loading would have to construct by running code."""


def deepspeed_globals() -> list[Any]:
    """The classes DeepSpeed's ZeRO optimizer states pickle besides tensors (checked on 0.19)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO-1/2: (numel, start)

    # Python pickles enum members by name, as ``getattr(ZeroStageEnum, "optimizer_states")``.
    # Allowing the real ``getattr`` would let a file walk from any allowed class to arbitrary
    # code, so the pickle's ``builtins.getattr`` resolves to enum_member instead.
    return [LossScaler, ZeroStageEnum, fragment_address, (enum_member, "builtins.getattr")]


def enum_member(cls: Any, name: Any) -> Any:
    """Stand-in for ``getattr`` while loading: only a member of an allow-listed enum."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    if cls is not ZeroStageEnum or not isinstance(name, str) or name not in cls.__members__:
        raise pickle.UnpicklingError(f"getattr({cls!r}, {name!r}) is not an allowed enum member")
    return cls[name]


def safe_load(path: str | Path, allowed: Sequence[Any] = (), mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (plus ``allowed`` globals); a file that needs
    anything else, or is not a torch checkpoint, raises :class:`UnsafeCheckpointError`."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError) as e:
        # RuntimeError: with mmap, a file that is not a zip torch checkpoint (e.g. a raw pickle)
        if isinstance(e, RuntimeError) and not mmap:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint file {str(path)!r}: it holds more than tensors and "
            f"plain data, so loading it could run code ({first[:300]}). fedray does not write "
            "such files (those of fedray versions before weights-only loading held numpy RNG "
            "state: resume them with that version, or start from their export with "
            "model.path). Delete that checkpoint directory (training resumes from the previous "
            "one), or start a new run.name.",
            "run.dir",
        ) from e


def check_files(directory: Path, files: Sequence[str], allowed: Sequence[Any] = ()) -> None:
    """Refuse the checkpoint unless every ``.pt`` file in it loads under ``weights_only``
    (memory-mapped, so tensor data is not read)."""
    for rel in files:
        if rel.endswith((".pt", ".pth", ".bin")):
            safe_load(directory / rel, allowed, mmap=True)


class SafeCheckpointEngine:
    """Wraps a DeepSpeed checkpoint engine: saves as before, loads with :func:`safe_load`
    (DeepSpeed's own engine loads with ``weights_only=False``)."""

    def __init__(self, inner: Any):
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        state = safe_load(path, deepspeed_globals())  # on the CPU
        # DeepSpeed passes a device, or a storage -> storage function that keeps CPU storages
        # on the CPU (it moves the states to the accelerator itself afterwards).
        if (
            isinstance(map_location, (str, torch.device))
            and torch.device(map_location).type != "cpu"
        ):
            state = _to(state, torch.device(map_location))
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _to(obj: Any, device: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to(v, device)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj
