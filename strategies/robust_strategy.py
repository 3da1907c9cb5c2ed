"""Byzantine-robust strategies: the same plumbing as FedAvg (validation, checkpoint, resume,
round table) with a robust fold stage (``strategies.aggregators.StoredAggregator``) and the
FedAvg server step ``w + eta * aggregate``.

``median`` / ``trimmed_mean`` (Yin et al. 2018), ``krum`` / ``multikrum`` (Blanchard et al.
2017), ``centered_clip`` (Karimireddy et al. 2021; the center is the previous round's
aggregate, kept in the checkpoint so a resumed run continues bit for bit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies.aggregators import StoredAggregator
from strategies.base import DeltaStrategy
from strategies.math import Arrays
from strategies.pipeline import Aggregator


class RobustStrategy(DeltaStrategy):
    """A robust rule (``rule.rule``) in front of the FedAvg server step."""

    def __init__(self, *, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self._center: Arrays | None = None
        self._last: StoredAggregator | None = None

    def make_aggregator(self, server_round: int) -> Aggregator:
        self._last = StoredAggregator(self.rule, self.work_dir, center=self._center)
        return self._last

    def server_step_name(self) -> str:
        return f"w + {self.eta} * robust aggregate"

    def server_update(self, global_, acc, server_round):  # type: ignore[no-untyped-def]
        if self._last is not None and self.rule.rule == "centered_clip":
            # Karimireddy et al. start each round's clipping from the last aggregate.
            self._center = {k: np.array(v) for k, v in (self._last.last_center or {}).items()}
        return super().server_update(global_, acc, server_round)

    def state_arrays(self) -> Arrays:
        return {f"center.{k}": v for k, v in (self._center or {}).items()}

    def load_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state(meta, arrays)
        center = {k[7:]: np.array(v) for k, v in arrays.items() if k.startswith("center.")}
        self._center = center or None
