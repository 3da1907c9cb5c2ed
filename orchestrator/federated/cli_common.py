"""What every federated command shares: exit codes, the error line, signal handling."""

from __future__ import annotations

import sys
from collections.abc import Callable

from orchestrator.federated.processes import interrupted_exit_code, stop_children_on_signals

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def stoppable(body: Callable[[], int]) -> int:
    """Run a command's body so that SIGINT, SIGTERM and SIGHUP stop it and every process it
    started (by PID); returns the body's exit code, or 128 + the signal number."""
    try:
        with stop_children_on_signals():
            return body()
    except KeyboardInterrupt as e:
        return interrupted_exit_code(e)
