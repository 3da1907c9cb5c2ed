"""SCAFFOLD at a site (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Algorithm 1 with option II).

Each site keeps a control variate ``c_i`` (persistent site state, clients/site_state.py); the
server sends its own ``c`` with the model. Every local step is corrected by ``c - c_i``, which
replaces the site's own drift direction by the federation's; after ``K`` steps of size ``lr``
from ``x`` to ``y_i``:

    c_i+ = c_i - c + (x - y_i) / (K lr)          (option II)
    reply: delta_y = y_i - x,  delta_c = c_i+ - c_i

With plain SGD a corrected step is ``y <- y - lr (g + c - c_i)``, the paper's. fedray's local
optimizer is AdamW, so the correction is applied as its own displacement after each optimizer
step, ``y <- step(y) - lr (c - c_i)``: then ``c_i+`` is the site's mean uncorrected step
direction (its gradient, for SGD) and ``c`` their mean over sites, which is exactly what the
paper's control variates estimate; with SGD both forms are the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

from clients.site_state import SiteStateStore
from orchestrator.contract.arrays import Arrays, array_view
from orchestrator.contract.messages import SCAFFOLD_C

STATE_NAME = "scaffold-c"
"""Name of the site control variate in the site state store."""


class SiteControl:
    """One round of SCAFFOLD at a site: the server's ``c`` from the message, this site's ``c_i``
    from its state store; :meth:`correction` before local training, :meth:`finish` after."""

    def __init__(self, content: RecordDict, store: SiteStateStore) -> None:
        self.content, self.store = content, store
        self.c: Arrays = {}
        self.c_i: Arrays = {}

    def correction(self, trainable: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """``c - c_i`` for the ``trainable`` tensors (the received values, for their keys,
        shapes and dtypes). ``c_i`` starts at zero, and restarts there after a logged reset of
        unusable stored state."""
        self.c = received_control_variate(self.content, trainable)
        stored = self.store.load(STATE_NAME, like=trainable)
        self.c_i = stored if stored is not None else zeros_like(trainable)
        return correction(self.c, self.c_i)

    def finish(self, delta_y: Mapping[str, np.ndarray], steps: int, lr: float) -> Arrays:
        """Save ``c_i+`` as this round's site state; returns ``delta_c`` for the reply."""
        self.c_i, delta_c = site_control_update(self.c, self.c_i, delta_y, steps, lr)
        self.store.save(STATE_NAME, self.c_i)
        return delta_c


def zeros_like(arrays: Mapping[str, np.ndarray]) -> Arrays:
    return {k: np.zeros(v.shape, v.dtype) for k, v in arrays.items()}


def received_control_variate(content: RecordDict, like: Mapping[str, np.ndarray]) -> Arrays:
    """The server's ``c`` from a train message, checked against the trainable tensors ``like``
    (same keys, shapes, dtypes; finite). What a site receives is untrusted: ValueError otherwise.
    An empty record means zeros (a server that learns the trainable tensors from the first
    replies has no ``c`` before them).
    """
    record = content.get(SCAFFOLD_C)
    if not isinstance(record, ArrayRecord):
        raise ValueError(
            f"the task asks for SCAFFOLD but the message has no {SCAFFOLD_C!r} array record"
        )
    if not record:
        return zeros_like(like)
    keys, want = set(record.keys()), set(like)
    if keys != want:
        raise ValueError(
            f"{SCAFFOLD_C}: tensors differ from the trainable ones: "
            f"missing={sorted(want - keys)[:3]} extra={sorted(keys - want)[:3]}"
        )
    out: Arrays = {}
    for k, arr in record.items():
        a = array_view(arr)
        ref = like[k]
        if a.shape != tuple(ref.shape) or a.dtype != ref.dtype:
            raise ValueError(f"{SCAFFOLD_C}.{k}: {a.dtype}{list(a.shape)}, expected {ref.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{SCAFFOLD_C}.{k}: contains NaN or Inf")
        out[k] = a
    return out


def correction(
    c: Mapping[str, np.ndarray], c_i: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """``c - c_i`` per tensor, as the torch tensors the local steps subtract (times ``lr``)."""
    return {k: torch.from_numpy(np.asarray(c[k] - c_i[k])) for k in c}


def site_control_update(
    c: Mapping[str, np.ndarray],
    c_i: Mapping[str, np.ndarray],
    delta_y: Mapping[str, np.ndarray],
    steps: int,
    lr: float,
) -> tuple[Arrays, Arrays]:
    """Option II: ``(c_i+, delta_c)`` with ``c_i+ = c_i - c - delta_y / (K lr)`` and
    ``delta_c = c_i+ - c_i`` (``delta_y = y_i - x``)."""
    if steps < 1:
        raise ValueError(f"SCAFFOLD needs at least one local step, got {steps}")
    scale = 1.0 / (steps * lr)
    new: Arrays = {}
    delta: Arrays = {}
    for k, ci in c_i.items():
        dtype = ci.dtype
        # float64 arithmetic: scale is large (1 / (K lr)), delta_y small.
        exact = ci.astype(np.float64) - c[k] - scale * delta_y[k].astype(np.float64)
        new[k] = exact.astype(dtype)
        delta[k] = (new[k] - ci).astype(dtype)
    return new, delta


__all__ = [
    "STATE_NAME",
    "SiteControl",
    "correction",
    "received_control_variate",
    "site_control_update",
]
