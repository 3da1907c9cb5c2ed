"""What one trial runs: the tuned job with the trial's values, through the commands' own code.

- A federation runs in the trial's process on a :class:`LocalGrid`: the same ServerApp round loop
  (:func:`run_federated`) and the same ClientApp as ``fedray simulate``, without starting
  Flower's simulation engine (a second Ray) inside a Ray Tune trial (docs/tuning.md, "What a
  trial is", has the measurement). Every evaluated round is reported to Tune, so ASHA can stop
  the trial at a round boundary.
- Pretraining is Ray Train V2's supported pattern: a function trainable that runs
  :func:`orchestrator.pretrain.pretrain` (it builds and fits the ``TorchTrainer``) with Ray
  Tune's ``TuneReportCallback``, which forwards each ``ray.train.report`` (every eval) to Tune.

Each trial's run directory is ``TUNE_DIR/trials/<trial id>``: a trial restarted after an
interruption resumes from its own checkpoints there (no finished round is computed again).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from orchestrator.tune.conditional import trial_values
from orchestrator.tune.setup import TuneSetup

TRIALS_DIR = "trials"
EVAL_KEY = "values"
"""An eval-seed trial's config is ``{EVAL_KEY: {key: value, ..., "train.seed": s}}`` (one grid
point per config and seed); a search trial's is the drawn values themselves."""


def trial_job(setup: TuneSetup, config: dict[str, Any], tune_dir: str) -> Any:
    """The tuned job with this trial's values, running in its own directory."""
    from ray import tune

    job = setup.job(trial_values(config.get(EVAL_KEY, config)))
    job.run.dir = str(Path(tune_dir) / TRIALS_DIR / tune.get_context().get_trial_id())
    return job


def round_metrics(rec: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """What a federated round reports to Tune (None for rounds not evaluated, and round 0:
    the starting model, the same for every trial)."""
    value = rec.get("eval", {}).get(metric)
    if rec.get("round", 0) < 1 or value is None:
        return None
    out = {metric: float(value), "round": int(rec["round"])}
    if rec.get("epsilon") is not None:
        out["epsilon"] = float(rec["epsilon"])
    return out


def federated_trial(config: dict[str, Any], setup: TuneSetup, tune_dir: str) -> None:
    """A Tune function trainable: one federation, reported after every evaluated round."""
    from ray import tune
    from rich.console import Console

    from clients.client_app import app
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import run_federated

    job = trial_job(setup, config, tune_dir)
    grid = LocalGrid.simulated(app, job.federation.num_sites)
    reported: list[dict[str, Any]] = []

    def on_round(rec: dict[str, Any]) -> None:
        if (m := round_metrics(rec, setup.metric)) is not None:
            reported.append(m)
            tune.report(m)

    quiet = RoundTable(job.task.kind, Console(file=io.StringIO()))  # trials print no tables
    result = run_federated(grid, job, Path(job.run.dir), on_round=on_round, table=quiet)
    if not reported:  # resumed after its last round: report what it ended with
        last = [m for r in result.rounds if (m := round_metrics(r, setup.metric))]
        if last:
            tune.report(last[-1])


def pretrain_trial(config: dict[str, Any], setup: TuneSetup, tune_dir: str) -> None:
    """A Tune function trainable that runs ``fedray pretrain``'s trainer (Ray Train V2)."""
    from ray.tune.integration.ray_train import TuneReportCallback
    from rich.console import Console

    from orchestrator.pretrain import pretrain

    job = trial_job(setup, config, tune_dir)
    pretrain(job, console=Console(file=io.StringIO()), callbacks=[TuneReportCallback()])


TRAINABLES = {"federated": federated_trial, "pretrain": pretrain_trial}

__all__ = [
    "EVAL_KEY",
    "TRAINABLES",
    "TRIALS_DIR",
    "federated_trial",
    "pretrain_trial",
    "round_metrics",
]
