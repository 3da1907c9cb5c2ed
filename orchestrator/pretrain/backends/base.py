"""The interface the training loop needs from a parallelism backend (DDP, DeepSpeed)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import torch


class Backend(Protocol):
    """One worker's view of the model, optimizer and scheduler under some parallelism scheme."""

    name: str
    model: torch.nn.Module
    """The module to call for forward passes (possibly wrapped: DDP, DeepSpeed engine)."""

    def no_sync(self, skip_sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for a micro-step; ``skip_sync`` = not the last micro-batch of the step."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass of a micro-batch loss (already divided by the accumulation steps)."""
        ...

    def step(self) -> float:
        """Clip, optimizer step, scheduler step, zero grads; returns the pre-clip grad norm."""
        ...

    def lr(self) -> float: ...

    def save(self, directory: Path, step: int, extra: dict[str, Any]) -> None:
        """Write this rank's part of a checkpoint into ``directory`` (manifest included)."""
        ...

    def load(self, directory: Path) -> dict[str, Any]:
        """Restore from a verified checkpoint directory; returns the ``extra`` dict saved."""
        ...

    def eval_module(self) -> torch.nn.Module:
        """The plain (unwrapped) module for evaluation."""
        ...
