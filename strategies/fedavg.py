"""FedAvg and FedProx over weight updates (McMahan et al. 2017; Li et al. 2020)."""

from __future__ import annotations

from typing import Any

from strategies.base import DeltaStrategy


class FedAvg(DeltaStrategy):
    """``w <- w + eta * sum_k n_k delta_k / sum_k n_k``; eta = 1 is classic FedAvg."""

    name = "fedavg"


class FedProx(DeltaStrategy):
    """FedAvg whose sites minimise ``loss + mu/2 * ||w - w_global||^2``.

    The server side only sends ``proximal-mu``; the term itself is added by the client
    (``clients.train.proximal_term``).
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def extra_train_config(self) -> dict[str, Any]:
        return {"proximal-mu": float(self.proximal_mu)}
