"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification").

The mean update ``delta`` is a (negative) pseudo-gradient; the server accumulates it in a
momentum buffer ``v`` (server state: checkpointed with the model, so resume is exact):

    v <- beta * v + delta                       (beta = strategy.server_momentum, default 0.9)
    w <- w + eta * v                            (eta = strategy.server_lr, default 1)

``beta = 0`` is FedAvg. Momentum smooths the round-to-round swings of the average that non-IID
sites cause (each round's sample pulls towards different optima).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.contract.arrays import Arrays
from strategies.base import DeltaStrategy
from strategies.running_sum import RunningSum

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob


def momentum_step(
    w: np.ndarray, v: np.ndarray | None, delta: np.ndarray, eta: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(w + eta * v', v')`` with ``v' = beta * v + delta`` (``v`` starts at zero: ``None``)."""
    v_new = delta.astype(np.float64) if v is None else beta * v.astype(np.float64) + delta
    w_new = w.astype(np.float64) + eta * v_new
    return w_new.astype(w.dtype), v_new.astype(delta.dtype)


class FedAvgM(DeltaStrategy):
    """FedAvg with a server momentum buffer (see the module doc)."""

    name = "fedavgm"

    def __init__(self, *, server_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        self.beta = server_momentum
        self.v: Arrays = {}

    @classmethod
    def config_kwargs(cls, job: FederatedJob) -> dict[str, Any]:
        return {**super().config_kwargs(job), "server_momentum": job.strategy.server_momentum}

    def server_update(self, global_: Arrays, acc: RunningSum, server_round: int) -> Arrays:
        out = dict(global_)
        for k, d in acc.mean().items():
            out[k], self.v[k] = momentum_step(global_[k], self.v.get(k), d, self.eta, self.beta)
        return out

    def server_step_name(self) -> str:
        return f"fedavgm: v = {self.beta} * v + mean update; w + {self.eta} * v"

    def state_arrays(self) -> Arrays:
        return {f"v.{k}": v for k, v in self.v.items()}

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state(meta, arrays)
        self.v = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("v.")}
