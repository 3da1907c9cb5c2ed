"""SCAFFOLD on the server (Karimireddy et al. 2020, Algorithm 1, option II control variates).

Non-IID sites pull the model towards their own optima ("client drift"); SCAFFOLD corrects each
local step by ``c - c_i``, the difference between the federation's and the site's estimated
update direction. The server keeps ``c`` (server state: checkpointed, so resume is exact), sends
it with the model (array record ``scaffold-c``), and each site replies with its update ``delta_y``
and the change ``delta_c`` of its own control variate (``scaffold-delta-c``, validated like the
update). With ``S`` the sites that replied out of ``N`` connected:

    x <- x + eta * mean_S(delta_y)              (eta = strategy.server_lr, default 1)
    c <- c + |S| / N * mean_S(delta_c)

Means are weighted like FedAvg's (``strategy.weighting``: by examples or uniform), so with every
site taking part ``c`` stays the same weighted mean of the sites' ``c_i`` as ``x`` is of theirs.
The site side is clients/scaffold.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from orchestrator.contract.arrays import Arrays, from_numpy
from orchestrator.contract.messages import DELTA_C, SCAFFOLD_C
from strategies.base import DeltaStrategy
from strategies.pipeline import Aggregate, Aggregator, Reply
from strategies.running_sum import RunningSum, apply_sgd_from_sum


def server_control_update(
    c: Mapping[str, np.ndarray], mean_delta_c: Mapping[str, np.ndarray], share: float
) -> Arrays:
    """``c + share * mean_delta_c`` (``share`` = replying sites / all sites), in ``c``'s dtype."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share of sites must be in (0, 1], got {share}")
    return {
        k: (c[k].astype(np.float64) + share * mean_delta_c[k].astype(np.float64)).astype(c[k].dtype)
        for k in c
    }


class ControlVariateFold(Aggregator):
    """Wraps the round's fold stage: also folds each reply's ``delta_c`` (same weights)."""

    def __init__(self, inner: Aggregator, accumulate: np.dtype | str, uniform: bool) -> None:
        self.inner = inner
        self.delta_c = RunningSum(accumulate)
        self.uniform = uniform
        self.name = f"{inner.name}; delta_c: the same weighted mean"

    def add(self, reply: Reply) -> None:
        self.inner.add(reply)
        self.delta_c.fold(reply.extras[DELTA_C], 1.0 if self.uniform else reply.weight)

    def result(self) -> Aggregate:
        return self.inner.result()

    @property
    def count(self) -> int:
        return self.inner.count


class Scaffold(DeltaStrategy):
    """FedAvg whose sites run control-variate-corrected local steps (see the module doc)."""

    name = "scaffold"
    reply_extra_arrays = (DELTA_C,)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.c: Arrays = {}
        self._fold: ControlVariateFold | None = None

    def extra_train_config(self) -> dict[str, Any]:
        return {"scaffold": True}

    def extra_train_records(self) -> dict[str, ArrayRecord]:
        if not self.c and self.update_keys is not None:  # c starts at zero
            self.c = {
                k: np.zeros(self._global[k].shape, self._global[k].dtype)
                for k in sorted(self.update_keys)
            }
        # Before the trainable tensors are known (stock ServerApp, round 1) an empty record:
        # the sites read it as zeros.
        return {SCAFFOLD_C: from_numpy(self.c)}

    def make_aggregator(self, server_round: int) -> Aggregator:
        uniform = self.fold.weighting == "uniform"
        self._fold = ControlVariateFold(
            super().make_aggregator(server_round), self.fold.accumulate, uniform
        )
        return self._fold

    def server_update(self, global_: Arrays, acc: RunningSum, server_round: int) -> Arrays:
        assert self._fold is not None, "server_update without this round's fold"
        share = min(1.0, acc.count / max(1, self.num_nodes))
        new = apply_sgd_from_sum(global_, acc, self.eta)
        mean_delta_c = self._fold.delta_c.mean()
        c = self.c or {k: np.zeros_like(v) for k, v in mean_delta_c.items()}
        self.c = server_control_update(c, mean_delta_c, share)
        return new

    def server_step_name(self) -> str:
        return f"scaffold: x + {self.eta} * mean delta_y; c + (replied / sites) * mean delta_c"

    def state_arrays(self) -> Arrays:
        return {f"c.{k}": v for k, v in self.c.items()}

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state(meta, arrays)
        self.c = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("c.")}
