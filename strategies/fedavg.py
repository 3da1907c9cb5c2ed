"""FedAvg and FedProx over weight updates (McMahan et al. 2017; Li et al. 2020)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from strategies.base import DeltaStrategy

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob

log = logging.getLogger(__name__)


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

    @classmethod
    def config_kwargs(cls, job: FederatedJob) -> dict[str, Any]:
        if job.strategy.proximal_mu == 0:
            log.warning("strategy.proximal_mu=0: FedProx without its proximal term is FedAvg")
        return {**super().config_kwargs(job), "proximal_mu": job.strategy.proximal_mu}

    def extra_train_config(self) -> dict[str, Any]:
        return {"proximal-mu": float(self.proximal_mu)}
