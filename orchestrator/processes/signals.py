"""Stop on a signal: SIGINT, SIGTERM and SIGHUP unwind a command like Ctrl-C.

Inside :func:`stop_children_on_signals` (what every ``fedray`` command that starts something runs
under), the first signal raises :class:`Interrupted` in the main thread, so every ``finally`` that
stops a process runs; leaving the block stops whatever is still running by PID
(:func:`orchestrator.processes.managed.stop_all`). Exit code after a signal: ``128 + signal
number`` (130 SIGINT, 143 SIGTERM, 129 SIGHUP), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence

from orchestrator.processes.managed import running_processes, stop_all

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (see :func:`stop_children_on_signals`)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted_exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number (a plain KeyboardInterrupt counts as SIGINT: 130)."""
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_children_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Run a block so that a signal stops it and everything it started, by PID.

    The first of ``signals`` raises :class:`Interrupted` in the main thread (unwinding through
    the ``finally`` blocks that stop processes); later ones are logged and ignored, so they
    cannot cut the clean-up short. On leaving the block, every :class:`ManagedProcess` still
    running is stopped (:func:`stop_all`), then the previous handlers come back. Outside the main
    thread (where Python cannot install handlers) only the final sweep applies.
    """
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            stop_all(running_processes())
        return

    def stopping(signum: int, frame: object) -> None:
        log.warning("%s: already stopping", signal.Signals(signum).name)

    def interrupt(signum: int, frame: object) -> None:
        for s in signals:
            signal.signal(s, stopping)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, stopping)
        try:
            stop_all(running_processes())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


__all__ = ["STOP_SIGNALS", "Interrupted", "interrupted_exit_code", "stop_children_on_signals"]
