"""The server entry point: a Flower ServerApp that runs a federated fine-tuning job.

    # stock Flower: pyproject [tool.flwr.app.components] serverapp = "orchestrator.federated.server_app:app"
    flwr run . --run-config 'config="simulate-demo" overrides="federation.num_rounds=2" run-dir="runs/fed1"'
    # from Python / tests: make_server_app(job) runs a resolved FederatedJob directly

Run config keys read by ``app`` (``context.run_config``, from ``[tool.flwr.app.config]`` and
``flwr run --run-config``):

    config      YAML file path or preset name (default "simulate-demo")
    overrides   space-separated key=value overrides, e.g. "strategy.name=fedadam federation.num_rounds=5"
    config-yaml the whole config as YAML text (wins over ``config``; what ``fedray server`` and
                ``fedray simulate`` send)
    run-dir     run directory (wins over run.dir / run.root + run.name); "" = from the config

This module is only the Flower wiring. What a run does is in
:mod:`orchestrator.federated.rounds` (round loop, run directory) and
:mod:`orchestrator.federated.setup` (tokenizer, labels, starting model, site task); what a round
does to the replies is the strategy's pipeline (``strategies/pipeline.py``).
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import load_config
from orchestrator.federated.rounds import FederatedResult, run_federated
from orchestrator.federated.setup import ServerSetup, prepare, server_data_path
from orchestrator.runs import resolve_run_dir

DEFAULT_CONFIG = "simulate-demo"


def make_server_app(
    job: FederatedJob,
    run_dir: Path | None = None,
    *,
    setup: ServerSetup | None = None,
    on_result: Callable[[FederatedResult], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    """A ServerApp bound to an already-resolved job (what ``simulate()`` runs in-process)."""
    server_app = ServerApp()
    target = run_dir or resolve_run_dir(job.run, "simulate")

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result = run_federated(grid, job, target, setup=setup, on_round=on_round)
        if on_result is not None:
            on_result(result)

    return server_app


def job_from_run_config(run_config: dict[str, Any]) -> tuple[FederatedJob, Path]:
    """The job and run directory named by a ``context.run_config`` (keys in the module doc)."""
    source = str(run_config.get("config", "") or DEFAULT_CONFIG)
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    config_yaml = str(run_config.get("config-yaml", "") or "")
    if config_yaml:
        # The whole resolved job, sent by `fedray server` (the SuperLink may be on another host).
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "job.yaml").write_text(config_yaml)
            job = load_config(FederatedJob, str(Path(d) / "job.yaml"), overrides)
    else:
        job = load_config(FederatedJob, source, overrides, default_preset=DEFAULT_CONFIG)
    run_dir_s = str(run_config.get("run-dir", "") or "")
    run_dir = (
        Path(run_dir_s).expanduser().absolute()
        if run_dir_s
        else resolve_run_dir(job.run, "simulate")
    )
    return job, run_dir


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job, run_dir = job_from_run_config(dict(context.run_config))
    run_federated(grid, job, run_dir)


__all__ = [
    "FederatedResult",
    "ServerSetup",
    "app",
    "job_from_run_config",
    "make_server_app",
    "prepare",
    "run_federated",
    "server_data_path",
]
