"""The ``fedray`` command. Each subcommand: parse -> validate -> build -> run -> close.

    fedray pretrain [CONFIG] [key=value ...] [--print-config] [--dry-run] [--verbose]
    fedray simulate [CONFIG] [key=value ...] [--print-config] [--dry-run] [--verbose]
                    [--centralized]
    fedray submit [CONFIG] [key=value ...] --address http://HEAD:8265 [--dry-run] [--no-wait]
    fedray jobs list | logs ID [--follow] | stop ID [--address http://HEAD:8265]

CONFIG is a YAML file or a preset name (``fedray presets`` lists them). Exit codes: 0 success,
2 bad configuration or input (nothing was launched), 1 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from orchestrator.cli_args import print_dry_run, split_config_args
from orchestrator.config.loader import ConfigError, load_dictconfig, preset_names, to_job, to_yaml

EXIT_CONFIG = 2
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

# Subcommands added by other modules register here: name -> (schema, default preset, run, plan).
Command = tuple[type, str, Callable[..., object], Callable[..., dict]]


def _pretrain_command() -> Command:
    from orchestrator.config.schema import PretrainJob
    from orchestrator.pretrain import launch_plan, pretrain

    def plan(job: PretrainJob) -> dict:
        from orchestrator.data import prepare_text_data

        return launch_plan(job, prepare_text_data(job.data))

    return PretrainJob, "pretrain-tiny", pretrain, plan


def _simulate_command() -> Command:
    from orchestrator.cli_args import privacy_plan, round_pipeline
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.simulate import simulate, simulation_plan

    def plan(job: FederatedJob) -> dict:
        return {
            **simulation_plan(job),
            "round_pipeline": round_pipeline(job),
            "privacy": privacy_plan(job),
        }

    return FederatedJob, "simulate-demo", simulate, plan


# Job commands share one shape: [CONFIG] key=value ... [--print-config] [--dry-run].
COMMANDS: dict[str, tuple[str, Callable[[], Command]]] = {
    "pretrain": ("pretrain a causal LM with Ray Train (DDP or DeepSpeed)", _pretrain_command),
    "simulate": ("federated fine-tuning, sites simulated on Ray (Flower)", _simulate_command),
}

# Commands with their own flags (e.g. `fedray site --server HOST:PORT --data PATH`):
# name -> (help, lazy loader returning main(argv) -> exit code).
OTHER_COMMANDS: dict[str, tuple[str, Callable[[], Callable[[list[str]], int]]]] = {}


def _tool(name: str) -> Callable[[], Callable[[list[str]], int]]:
    """``orchestrator/<name>.py``'s ``main(argv) -> exit code``, imported on use."""

    def load() -> Callable[[list[str]], int]:
        import importlib

        return importlib.import_module(f"orchestrator.{name}").main

    return load


def _federated_command(name: str) -> Callable[[], Callable[[list[str]], int]]:
    def load() -> Callable[[list[str]], int]:
        from orchestrator.federated import commands

        return getattr(commands, f"{name}_main")

    return load


OTHER_COMMANDS.update(
    {
        "server": (
            "federated job across real sites (Flower SuperLink)",
            _federated_command("server"),
        ),
        "site": ("join a federation as a site (Flower SuperNode)", _federated_command("site")),
        "certs": ("create a test CA + server certificate", _federated_command("certs")),
        "site-key": ("create a site's key pair", _federated_command("site_key")),
        "submit": ("submit a pretraining job to a Ray cluster (from a laptop)", _tool("submit")),
        "jobs": ("list | logs ID | stop ID: jobs on a Ray cluster", _tool("jobs")),
        "report": ("plots and an HTML report of one or more run directories", _tool("report")),
        "doctor": ("check versions, GPUs, disk, Ray, certificates and ports", _tool("doctor")),
    }
)


def report_config_error(e: ConfigError) -> None:
    err.print(f"[bold red]config error:[/] {escape(str(e))}", soft_wrap=True)


def run_job_command(name: str, argv: Sequence[str]) -> int:
    help_text, factory = COMMANDS[name]
    p = argparse.ArgumentParser(prog=f"fedray {name}", description=help_text)
    p.add_argument(
        "args", nargs="*", metavar="[CONFIG] key=value", help="YAML file or preset, then overrides"
    )
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument(
        "--dry-run", action="store_true", help="validate, print what would be launched, exit"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray/Flower/DeepSpeed/transformers lines on the console "
        "(same as logging.verbose=true; RUN_DIR/run.log always has them)",
    )
    if name == "simulate":
        p.add_argument(
            "--centralized",
            action="store_true",
            help="the job's centralized baseline: every site's training rows at one site, the "
            "same examples per round, evaluated on each site's held-out rows (its own run)",
        )
    ns = p.parse_args(argv)
    schema, default_preset, run, plan = factory()
    if getattr(ns, "centralized", False):
        from orchestrator.federated.centralized import centralized, centralized_plan

        run, plan = centralized, centralized_plan
    source, overrides = split_config_args(ns.args)
    if ns.verbose:
        overrides.append("logging.verbose=true")
    try:
        merged = load_dictconfig(schema, source, overrides, default_preset=default_preset)
        job = to_job(schema, merged)
        if ns.print_config:
            out.print(to_yaml(job), end="", markup=False)
            return 0
        if ns.dry_run:
            print_dry_run(job, plan(job))
            return 0
        from orchestrator.federated.processes import stop_children_on_signals

        # SIGTERM/SIGHUP (systemd, docker, a closed terminal) unwind like Ctrl-C: the finally
        # blocks stop the embedded Ray or the simulation SuperLink, then any process left by PID.
        with stop_children_on_signals():
            run(job)
    except ConfigError as e:
        report_config_error(e)
        return EXIT_CONFIG
    except KeyboardInterrupt as e:
        from orchestrator.federated.processes import interrupted_exit_code

        err.print("interrupted; re-run with the same run.name to resume from the last checkpoint")
        return interrupted_exit_code(e)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("FEDRAY_LOG_LEVEL", "WARNING"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        out.print(
            "usage: fedray COMMAND [CONFIG] [key=value ...] [--print-config] [--dry-run] "
            "[--verbose]\n",
            markup=False,
        )
        for name, (help_text, _) in {**COMMANDS, **OTHER_COMMANDS}.items():
            out.print(f"  {name:<10} {help_text}")
        out.print(f"  {'presets':<10} list the bundled config presets")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "presets":
        out.print("\n".join(preset_names()))
        return 0
    if cmd in OTHER_COMMANDS:
        try:
            return OTHER_COMMANDS[cmd][1]()(rest)
        except ConfigError as e:
            report_config_error(e)
            return EXIT_CONFIG
    if cmd not in COMMANDS:
        names = ", ".join([*COMMANDS, *OTHER_COMMANDS, "presets"])
        err.print(f"unknown command {cmd!r}; commands: {names}", markup=False)
        return EXIT_CONFIG
    return run_job_command(cmd, rest)


if __name__ == "__main__":
    sys.exit(main())
