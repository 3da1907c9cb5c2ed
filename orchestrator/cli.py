"""The ``fedray`` command: picks a command handler (:mod:`orchestrator.commands`) and returns its
exit code. Each job command: parse -> validate -> build -> run -> close.

    fedray pretrain [CONFIG] [key=value ...] [--print-config] [--dry-run] [--verbose]
    fedray simulate [CONFIG] [key=value ...] [--print-config] [--dry-run] [--verbose]
                    [--centralized]
    fedray server [CONFIG] [key=value ...] [--resume RUN_DIR] [--certs DIR] [--site-keys PUB ...]
    fedray site --server HOST:PORT --data PATH [--key KEY] [--root-cert CA]
    fedray submit [CONFIG] [key=value ...] --address http://HEAD:8265 [--dry-run] [--no-wait]
    fedray jobs list | logs ID [--follow] | stop ID [--address http://HEAD:8265]
    fedray compress EXPORT --method int8|int4 [--out DIR] [--eval-data FILE]
    fedray tune CONFIG [key=value ...] [--print-config] [--dry-run] [--resume RUN_DIR]

CONFIG is a YAML file or a preset name (``fedray presets`` lists them); key=value overrides may
come before or after the flags. Exit codes (:mod:`orchestrator.commands.common`): 0 success,
2 bad configuration or input (nothing was launched), 1 a failure while running, 128 + N after
signal N once everything started is stopped.

Nothing heavy is imported here: ``--help``, ``presets`` and config errors answer at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from orchestrator.commands import pretrain, simulate
from orchestrator.commands.common import config_error, out

# Job commands: name -> (help, factory[, add_arguments]); see orchestrator.commands.job.
COMMANDS: dict[str, tuple] = {
    "pretrain": (pretrain.HELP, pretrain.pretrain_command),
    "simulate": (simulate.HELP, simulate.simulate_command, simulate.add_arguments),
}

# Commands with their own flags (e.g. `fedray site --server HOST:PORT --data PATH`):
# name -> (help, lazy loader returning main(argv) -> exit code).
OTHER_COMMANDS: dict[str, tuple[str, Callable[[], Callable[[list[str]], int]]]] = {}


def _handler(module: str, name: str = "main") -> Callable[[], Callable[[list[str]], int]]:
    """``module.name``, a ``main(argv) -> exit code``, imported on use."""

    def load() -> Callable[[list[str]], int]:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


OTHER_COMMANDS.update(
    {
        "server": (
            "federated job across real sites (Flower SuperLink)",
            _handler("orchestrator.commands.server", "server_main"),
        ),
        "site": (
            "join a federation as a site (Flower SuperNode)",
            _handler("orchestrator.commands.site", "site_main"),
        ),
        "certs": (
            "create a test CA + server certificate",
            _handler("orchestrator.commands.certs", "certs_main"),
        ),
        "site-key": (
            "create a site's key pair",
            _handler("orchestrator.commands.certs", "site_key_main"),
        ),
        "submit": (
            "submit a pretraining job or a federated simulation to a Ray cluster (from a laptop)",
            _handler("orchestrator.commands.submit"),
        ),
        "jobs": (
            "list | logs ID | stop ID: jobs on a Ray cluster",
            _handler("orchestrator.commands.jobs"),
        ),
        "tune": (
            "hyperparameter search over a pretraining job or a federation (Ray Tune)",
            _handler("orchestrator.commands.tune"),
        ),
        "report": (
            "plots and an HTML report of one or more run directories",
            _handler("orchestrator.commands.report"),
        ),
        "doctor": (
            "check versions, GPUs, disk, Ray, certificates and ports",
            _handler("orchestrator.commands.doctor"),
        ),
        "compress": (
            "quantized copy of an export (int8/int4), measured before and after",
            _handler("orchestrator.commands.compress"),
        ),
    }
)


def _usage() -> int:
    out.print(
        "usage: fedray COMMAND [CONFIG] [key=value ...] [--print-config] [--dry-run] [--verbose]\n",
        markup=False,
    )
    for name, (help_text, *_) in {**COMMANDS, **OTHER_COMMANDS}.items():
        out.print(f"  {name:<10} {help_text}", markup=False)
    out.print(f"  {'presets':<10} list the bundled config presets", markup=False)
    return 0


def _presets() -> int:
    from orchestrator.config.loader import preset_names

    out.print("\n".join(preset_names()), markup=False)
    return 0


def _other(cmd: str, argv: list[str]) -> int:
    from orchestrator.config.loader import ConfigError

    try:
        return OTHER_COMMANDS[cmd][1]()(argv)
    except ConfigError as e:
        return config_error(e)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("FEDRAY_LOG_LEVEL", "WARNING"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        return _usage()
    cmd, rest = argv[0], argv[1:]
    if cmd == "presets":
        return _presets()
    if cmd in OTHER_COMMANDS:
        return _other(cmd, rest)
    if cmd not in COMMANDS:
        names = ", ".join([*COMMANDS, *OTHER_COMMANDS, "presets"])
        return config_error(f"unknown command {cmd!r}; commands: {names}")
    from orchestrator.commands.job import run_job_command

    return run_job_command(cmd, COMMANDS[cmd], rest)


if __name__ == "__main__":
    sys.exit(main())
