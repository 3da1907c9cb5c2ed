"""A Ray Tune callback: one console line as each trial ends (imports Ray: loaded by the runner
once Ray is needed)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback


class TrialLines(Callback):
    def __init__(self, metric: str, time_attr: str) -> None:
        self.metric, self.time_attr = metric, time_attr

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        value = r.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        at = r.get(self.time_attr, "-")
        print(
            f"[fedray] trial {trial.trial_id}: {self.metric} {shown} at {self.time_attr} {at}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[fedray] trial {trial.trial_id}: failed (the search goes on)", flush=True)


__all__ = ["TrialLines"]
