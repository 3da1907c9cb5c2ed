"""What every ``fedray`` job command shares: the ``[CONFIG] key=value ...`` positional arguments
and the ``--dry-run`` rendering. Used by :mod:`orchestrator.cli` and
:mod:`orchestrator.federated.commands`; imports neither."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from orchestrator.config.loader import to_yaml


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading CONFIG (a YAML file or preset: no '=') and the key=value overrides."""
    args = list(args)
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def print_dry_run(job: Any, plan: Mapping[str, Any], file: IO[str] | None = None) -> None:
    """``--dry-run``: the merged config as YAML, then ``# launch plan`` and the plan as JSON."""
    file = file or sys.stdout
    print(to_yaml(job), end="", file=file)
    print("# launch plan", file=file)
    print(json.dumps(plan, indent=2), file=file)


def round_pipeline(job: Any) -> dict[str, list[str]]:
    """The stages a federated round runs for ``job``, site side and server side (``--dry-run``).

    The CLI is where both sides meet, so it may ask each for its own description.
    """
    from clients.pipeline import describe
    from orchestrator.contract.model import ModelSpec
    from orchestrator.contract.task import site_task
    from strategies import build_strategy

    task = site_task(job, ModelSpec(task=job.task.kind, hf_config={}), None, list(job.task.labels))
    return {"site": describe(task), "server": build_strategy(job).pipeline()}


__all__ = ["print_dry_run", "round_pipeline", "split_config_args"]
