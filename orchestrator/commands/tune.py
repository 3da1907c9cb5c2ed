"""``fedray tune CONFIG [key=value ...]``: hyperparameter search over the job CONFIG describes (a
pretraining job or a federation, told from its sections), on Ray Tune.

    fedray tune tune-demo                                  # the bundled federated example
    fedray tune my-tune.yaml tune.num_samples=16 tune.scheduler=fifo
    fedray tune my-tune.yaml --dry-run                     # the search, its space, per-trial CPUs
    fedray tune --resume runs/tune-20261207-120000         # after Ctrl-C, SIGTERM or a crash

Exit codes: 0 done (some trials may have failed: their rows say why); 2 a config error (an
unknown key in ``tune.space``, a domain of the wrong type, lo >= hi ...: nothing started, no
directory written); 1 every trial failed (the first error is shown); 128+N after signal N (the
search's state is kept: ``--resume`` continues it, losing at most the trials that were running).
Ray, torch and Flower are imported only once the config is valid and the search really runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from orchestrator.commands.common import (
    EXIT_OK,
    UsageError,
    add_job_args,
    failed,
    interrupted,
    parse,
    split_config_args,
    stoppable,
)

HELP = "hyperparameter search over a pretraining job or a federation (Ray Tune)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedray tune", description=HELP)
    add_job_args(
        p,
        "YAML file or preset of the job to tune, with a tune section; then overrides",
        "validate, print the search (space, scheduler, resources per trial), exit",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted search in RUN_DIR (its tune.yaml; finished trials are kept)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    ns = parse(parser(), argv)
    return stoppable(lambda: _run(ns))


def _setup(ns: argparse.Namespace) -> tuple[object, Path]:
    from orchestrator.runs import resolve_run_dir
    from orchestrator.tune.setup import load_tune

    source, overrides = split_config_args(ns.args)
    if ns.verbose:
        overrides.append("logging.verbose=true")
    if ns.resume is None:
        setup = load_tune(source, overrides)
        return setup, resolve_run_dir(setup.tune_job.run, "tune")
    tune_dir = Path(ns.resume).expanduser().absolute()
    if not (tune_dir / "tune.yaml").is_file():
        raise UsageError(
            f"--resume {ns.resume}: no tune.yaml there; give the directory a `fedray tune` run "
            "printed (runs/tune-<time>)."
        )
    if source is not None or overrides:
        raise UsageError("--resume takes the search's own tune.yaml; drop CONFIG and overrides.")
    return load_tune(str(tune_dir / "tune.yaml")), tune_dir


def _run(ns: argparse.Namespace) -> int:
    from orchestrator.config.loader import to_yaml

    setup, tune_dir = _setup(ns)
    if ns.print_config:
        print(to_yaml(setup.tune_job), end="")  # type: ignore[attr-defined]
        return EXIT_OK
    if ns.dry_run:
        from orchestrator.commands.plan import print_dry_run
        from orchestrator.tune.setup import dry_run_plan

        print_dry_run(setup.tune_job, dry_run_plan(setup, tune_dir))  # type: ignore[arg-type, attr-defined]
        return EXIT_OK
    from orchestrator.tune.runner import TuneFailed, run_tune

    try:
        run_tune(setup, tune_dir, resume=ns.resume is not None)  # type: ignore[arg-type]
    except TuneFailed as e:
        return failed(e)
    except KeyboardInterrupt as e:
        return interrupted(e, f"continue the search with: fedray tune --resume {tune_dir}")
    return EXIT_OK


__all__ = ["HELP", "main", "parser"]
