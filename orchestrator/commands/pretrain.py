"""``fedray pretrain [CONFIG] [key=value ...]``: pretrain a causal LM with Ray Train (DDP or
DeepSpeed ZeRO); the work is :func:`orchestrator.pretrain.pretrain`.

    fedray pretrain                                  # the default preset, pretrain-tiny
    fedray pretrain pretrain-small train.max_steps=200 --dry-run

The schema is imported here; torch, Ray and DeepSpeed only once the config is valid and the job
really runs (or ``--dry-run`` renders its plan), so a mistake is answered at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HELP = "pretrain a causal or masked LM with Ray Train (DDP or DeepSpeed), optionally distilled"


def check_inputs(job: Any) -> None:
    """Before torch or Ray loads: ``cluster.address`` answers (when set), then the data files
    and the ``distill`` teacher exist; each failure is a ``ConfigError`` naming the setting."""
    from orchestrator.cluster import check_reachable
    from orchestrator.data.sources import resolve_files

    if job.cluster.address:
        check_reachable(job.cluster)
    resolve_files(job.data.paths)
    if (
        job.distill.teacher
        and not (Path(job.distill.teacher).expanduser() / "config.json").is_file()
    ):
        from orchestrator.config.loader import ConfigError

        raise ConfigError(
            f"distill.teacher={job.distill.teacher!r} is not a local Hugging Face model "
            "directory (no config.json). Use the export/ directory of a fedray pretrain run, or "
            "a save_pretrained directory; hub ids cannot be downloaded here.",
            "distill.teacher",
        )


def run(job: Any) -> object:
    check_inputs(job)
    from orchestrator.pretrain import pretrain

    return pretrain(job)


def plan(job: Any) -> dict:
    check_inputs(job)
    from orchestrator.data import prepare_text_data
    from orchestrator.pretrain import launch_plan
    from orchestrator.pretrain.runner import checked_model_config

    data = prepare_text_data(job.data, objective=job.train.objective)
    checked_model_config(job, data)  # the same checks as a run: the objective, the teacher
    return launch_plan(job, data)


def pretrain_command() -> tuple[type, str, Any, Any]:
    """(schema, default preset, run, plan): what :mod:`orchestrator.commands.job` needs."""
    from orchestrator.config.schema import PretrainJob

    return PretrainJob, "pretrain-tiny", run, plan


__all__ = ["HELP", "plan", "pretrain_command", "run"]
