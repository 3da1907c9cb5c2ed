"""What every ``fedray`` command shares: one way to parse, report an error, exit, and stop on a
signal.

Exit codes (README "Exit codes"): :data:`EXIT_OK` 0 success; :data:`EXIT_FAILED` 1 a failure
while running; :data:`EXIT_CONFIG` 2 bad configuration or input, nothing was launched;
``128 + N`` after signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP), once everything the command
started is stopped by PID (:mod:`orchestrator.processes.signals`).

Errors: a mistake in what the user gave is one line, ``config error: <what was wrong>; <how to
fix it>`` (:func:`config_error`); a failure while running is ``error: ...`` (:func:`failed`).
Both go to stderr, never wrapped, so a script can grep them.

This module imports no ML library: ``--help`` and config errors answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class UsageError(ValueError):
    """Bad input found by a command before it started anything (exit 2, ``config error:``)."""


def config_error(message: object) -> int:
    """Print ``config error: <message>`` on stderr; return :data:`EXIT_CONFIG`."""
    err.print(f"[bold red]config error:[/] {escape(str(message))}", soft_wrap=True)
    return EXIT_CONFIG


def failed(message: object) -> int:
    """Print ``error: <message>`` on stderr (a failure while running); return :data:`EXIT_FAILED`."""
    err.print(f"[bold red]error:[/] {escape(str(message))}", soft_wrap=True)
    return EXIT_FAILED


def interrupted(e: KeyboardInterrupt, hint: str = "") -> int:
    """Print what stopped the command (and ``hint``: how to continue); return 128 + N."""
    from orchestrator.processes.signals import interrupted_exit_code

    what = f"interrupted ({e})" if str(e) else "interrupted"
    err.print(f"{what}{'; ' + hint if hint else ''}", markup=False, soft_wrap=True)
    return interrupted_exit_code(e)


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str], intermixed: bool = True
) -> argparse.Namespace:
    """Parse ``argv`` with positionals and flags in any order (``k=v --flag k=v``), as users
    type them. ``intermixed=False`` for a parser with subcommands (argparse cannot intermix
    those): it parses as argparse does by default."""
    if not intermixed:
        return parser.parse_args(list(argv))
    return parser.parse_intermixed_args(list(argv))


def add_job_args(p: argparse.ArgumentParser, config_help: str, dry_run_help: str) -> None:
    """The arguments every job command takes: ``[CONFIG] key=value ...``, ``--print-config``,
    ``--dry-run`` and ``--verbose``."""
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value", help=config_help)
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray/Flower/DeepSpeed/transformers lines on the console "
        "(same as logging.verbose=true; the run directory's run.log always has them)",
    )


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading CONFIG (a YAML file or preset: no '=') and the key=value overrides."""
    args = list(args)
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def stoppable(body: Callable[[], int], hint: str = "") -> int:
    """Run a command's body so that SIGINT, SIGTERM and SIGHUP stop it and every process it
    started (by PID); a :class:`~orchestrator.config.loader.ConfigError` or :class:`UsageError`
    that escapes is reported as one ``config error:`` line. Returns the body's exit code, 2, or
    128 + the signal number (after printing what stopped it and ``hint``)."""
    from orchestrator.config.loader import ConfigError
    from orchestrator.processes.signals import stop_children_on_signals

    try:
        with stop_children_on_signals():
            return body()
    except (ConfigError, UsageError) as e:
        return config_error(e)
    except KeyboardInterrupt as e:
        return interrupted(e, hint)


__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "UsageError",
    "add_job_args",
    "config_error",
    "err",
    "failed",
    "interrupted",
    "out",
    "parse",
    "split_config_args",
    "stoppable",
]
