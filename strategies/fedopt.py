"""Adaptive server optimizers on the averaged update: FedAdam, FedYogi, FedAdagrad.

Reddi et al. 2021, "Adaptive Federated Optimization". The mean update plays the role of a
(negative) gradient; the moments m and v live on the server and are checkpointed with the
model (``state_arrays``), so a resumed server continues with the same optimizer state:

    fedadam:     m <- b1 m + (1-b1) delta;  v <- b2 v + (1-b2) delta^2
    fedyogi:     m as above;  v <- v - (1-b2) delta^2 sign(v - delta^2)
    fedadagrad:  m as above;  v <- v + delta^2
    step:        w <- w + eta * m / (sqrt(v) + tau)

No bias correction, as in the paper (Flower's FedAdam adds one; ours keeps the paper's form so
the hand-worked test values are the textbook ones).
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


def update_moments(
    kind: str,
    m: np.ndarray | None,
    v: np.ndarray | None,
    delta: np.ndarray,
    beta1: float,
    beta2: float,
) -> tuple[np.ndarray, np.ndarray]:
    """New first and second moments for ``fedadam`` | ``fedyogi`` | ``fedadagrad``.

    Moments start at zero (``None``).
    """
    m = np.zeros_like(delta) if m is None else m
    v = np.zeros_like(delta) if v is None else v
    sq = delta * delta
    m_new = beta1 * m + (1.0 - beta1) * delta
    if kind == "fedadam":
        v_new = beta2 * v + (1.0 - beta2) * sq
    elif kind == "fedyogi":
        v_new = v - (1.0 - beta2) * sq * np.sign(v - sq)
    elif kind == "fedadagrad":
        v_new = v + sq
    else:
        raise ValueError(f"unknown adaptive strategy {kind!r}")
    return m_new.astype(delta.dtype), v_new.astype(delta.dtype)


def adaptive_step(
    w: np.ndarray, m: np.ndarray, v: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """``w + eta * m / (sqrt(v) + tau)``."""
    return (w + eta * m / (np.sqrt(v) + tau)).astype(w.dtype)


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

    @classmethod
    def config_kwargs(cls, job: FederatedJob) -> dict[str, Any]:
        s = job.strategy
        return {**super().config_kwargs(job), "beta1": s.beta1, "beta2": s.beta2, "tau": s.tau}

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
