"""Adaptive server optimizers on the averaged update: FedAdam, FedYogi, FedAdagrad.

Reddi et al. 2021, "Adaptive Federated Optimization". The mean update plays the role of a
(negative) gradient; the moments m and v live on the server and are checkpointed with the
model (``state_arrays``), so a resumed server continues with the same optimizer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies.base import DeltaStrategy
from strategies.math import Arrays, RunningSum, adaptive_step, update_moments


class FedOpt(DeltaStrategy):
    """Shared code; subclasses only name the second-moment rule."""

    name = "fedopt"
    step_scales_with_mean = False

    def __init__(
        self, *, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, **kwargs: Any
    ) -> None:
        kwargs.setdefault("eta", 0.01)
        super().__init__(**kwargs)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: Arrays = {}
        self.v: Arrays = {}

    def server_update(self, global_: Arrays, acc: RunningSum, server_round: int) -> Arrays:
        delta = acc.mean()
        out = dict(global_)
        for k, d in delta.items():
            self.m[k], self.v[k] = update_moments(
                self.name, self.m.get(k), self.v.get(k), d, self.beta1, self.beta2
            )
            out[k] = adaptive_step(global_[k], self.m[k], self.v[k], self.eta, self.tau)
        return out

    def state_arrays(self) -> Arrays:
        return {
            **{f"m.{k}": v for k, v in self.m.items()},
            **{f"v.{k}": v for k, v in self.v.items()},
        }

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state(meta, arrays)
        self.m = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("v.")}


class FedAdam(FedOpt):
    name = "fedadam"


class FedYogi(FedOpt):
    name = "fedyogi"


class FedAdagrad(FedOpt):
    name = "fedadagrad"
