"""The job commands (``fedray pretrain``, ``fedray simulate``): one shape,
``[CONFIG] key=value ... [--print-config] [--dry-run] [--verbose]``, one path:
parse -> load and validate -> (print the config | render the plan | run) -> exit code.

A job command is registered in :data:`orchestrator.cli.COMMANDS` as ``(help, factory)`` or
``(help, factory, add_arguments)``; ``factory()`` (``factory(ns)`` when the command has flags of
its own) returns ``(schema, default preset, run, plan)``. Only the schema is imported before the
config is checked; ``run`` and ``plan`` import the job's libraries when called.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.commands.common import (
    EXIT_OK,
    add_job_args,
    parse,
    split_config_args,
    stoppable,
)

Command = tuple[type, str, Callable[..., object], Callable[..., dict]]
"""(schema, default preset, run(job), plan(job) -> what ``--dry-run`` prints)."""

RESUME_HINT = "re-run with the same run.name to resume from the last checkpoint"


def job_parser(
    name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"fedray {name}", description=help_text)
    add_job_args(
        p,
        "YAML file or preset, then overrides",
        "validate, print what would be launched, exit",
    )
    if add_arguments is not None:
        add_arguments(p)
    return p


def run_job_command(name: str, entry: Sequence[Any], argv: Sequence[str]) -> int:
    """Parse ``argv`` for the job command ``name`` registered as ``entry``; return its exit code.

    A config error is one ``config error:`` line and exit 2 with nothing started (and no run
    directory written); a signal stops the job and what it started, then exits 128 + N."""
    help_text, factory, *own = entry
    add_arguments = own[0] if own else None
    ns = parse(job_parser(name, help_text, add_arguments), argv)
    command: Command = factory(ns) if add_arguments is not None else factory()
    # SIGTERM/SIGHUP (systemd, docker, a closed terminal) unwind like Ctrl-C: the finally
    # blocks stop the embedded Ray or the simulation SuperLink, then any process left by PID.
    return stoppable(lambda: _run_job(ns, command), RESUME_HINT)


def _run_job(ns: argparse.Namespace, command: Command) -> int:
    from orchestrator.commands.plan import print_dry_run
    from orchestrator.config.loader import load_dictconfig, to_job, to_yaml

    schema, default_preset, run, plan = command
    source, overrides = split_config_args(ns.args)
    if ns.verbose:
        overrides.append("logging.verbose=true")
    merged = load_dictconfig(schema, source, overrides, default_preset=default_preset)
    job = to_job(schema, merged)
    if ns.print_config:
        print(to_yaml(job), end="")
    elif ns.dry_run:
        print_dry_run(job, plan(job))
    else:
        run(job)
    return EXIT_OK


__all__ = ["Command", "job_parser", "run_job_command"]
