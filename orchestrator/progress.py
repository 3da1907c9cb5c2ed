"""Progress on the driver's console: a rich bar on a terminal, a few plain lines elsewhere.

fedray shows progress for three things, all on the driver (the process the user started):

- tokenization: :func:`track` counts the documents read while the tokenizer is trained or the
  corpus is packed (nothing shows when the cache already holds the result);
- pretraining steps: the driver's ``ProgressPrinter`` (:mod:`orchestrator.pretrain.metrics`)
  advances a bar from the step records rank 0 reports;
- federated rounds: :func:`round_progress` tails ``RUN_DIR/metrics.jsonl`` (the ServerApp runs
  in another process) and advances a bar per round.

On a terminal the bar is a rich live display; lines printed meanwhile (fedray's own, the round
table, errors) appear above it. When stdout is not a terminal (CI, a pipe, a log file) there is
no bar: steps and rounds already print one line each, and :func:`track` prints at most one line
per :data:`PLAIN_INTERVAL_S` (none for a task shorter than that, then a closing line).
``FEDRAY_PROGRESS=bar|plain|off`` overrides the choice.

The bar writes to the terminal itself, not through the quiet-console filter
(:mod:`orchestrator.run_log`), so its redraws never reach ``RUN_DIR/run.log``; the filter's
console-bound lines are printed through the bar's console meanwhile.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.text import Text

from orchestrator.run_log import ConsoleFilter

Mode = Literal["bar", "plain", "off"]
MODES: tuple[Mode, ...] = ("bar", "plain", "off")
ENV = "FEDRAY_PROGRESS"
PLAIN_INTERVAL_S = 30.0
"""At most one plain progress line per this many seconds."""

T = TypeVar("T")


def terminal_stream() -> IO[str]:
    """The stream stdout ends in: behind the quiet-console filter, the console it writes to."""
    out = sys.stdout
    return out.console if isinstance(out, ConsoleFilter) else out


def choose_mode(stream: IO[str] | None = None) -> Mode:
    """``bar`` on a terminal, ``plain`` elsewhere; ``FEDRAY_PROGRESS`` overrides (an unknown
    value is ignored)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in MODES:
        return forced  # type: ignore[return-value]
    stream = stream or terminal_stream()
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or exotic streams
        tty = False
    return "bar" if tty and os.environ.get("TERM") != "dumb" else "plain"


class _AboveBar(io.TextIOBase):
    """A console stream whose whole lines are printed through ``console``: while a live bar is
    shown, rich prints them above it."""

    def __init__(self, console: Console, terminal: IO[str]) -> None:
        super().__init__()
        self.rich, self.terminal = console, terminal
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self.rich.print(Text.from_ansi(line), soft_wrap=True, highlight=False)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest:
            self.rich.print(Text.from_ansi(rest), soft_wrap=True, highlight=False)

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.terminal.fileno()


class Progress:
    """One task's progress (``total=None``: a count with no end known).

    ``plain=False``: print nothing without a terminal (for steps and rounds, which print a line
    each anyway). Use as a context manager; :meth:`update` is thread-safe and cheap.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        unit: str = "",
        plain: bool = True,
        transient: bool = True,
        mode: Mode | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.transient, self.interval_s, self.clock = transient, interval_s, clock
        self.mode: Mode = mode or choose_mode()
        if self.mode == "plain" and not plain:
            self.mode = "off"
        self.completed = 0
        self.info = ""
        self._lock = threading.Lock()
        self._t0 = self._last_line = 0.0
        self._lines = 0
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        self._redirected: list[tuple[ConsoleFilter, IO[str]]] = []

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(finished=et is None)

    def start(self) -> None:
        self._t0 = self._last_line = self.clock()
        if self.mode == "bar":
            self._start_bar()

    def _start_bar(self) -> None:
        terminal = terminal_stream()
        console = Console(file=terminal, highlight=False)
        columns = [
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if self.total else TextColumn("{task.completed:,} " + self.unit),
            TimeElapsedColumn(),
            *([TimeRemainingColumn()] if self.total else []),
            TextColumn("{task.fields[info]}"),
        ]
        filters = [s for s in (sys.stdout, sys.stderr) if isinstance(s, ConsoleFilter)]
        # Without the quiet-console filter rich redirects stdout/stderr itself.
        self._bar = RichProgress(
            *columns,
            console=console,
            transient=self.transient,
            redirect_stdout=not filters,
            redirect_stderr=not filters,
        )
        self._task = self._bar.add_task(
            self.description, total=self.total, completed=self.completed, info=self.info
        )
        self._bar.start()
        above = _AboveBar(console, terminal)
        self._redirected = [(f, f.redirect_console(above)) for f in filters]

    def close(self, finished: bool = True) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()  # first: a line printed meanwhile still goes through the bar's console
            for f, old in self._redirected:
                f.redirect_console(old)
            self._redirected = []
        elif self.mode == "plain" and self._lines:
            self._print_line("done" if finished else "stopped")

    # ---- updates -----------------------------------------------------------------------------

    def update(self, completed: int | None = None, *, advance: int = 0, info: str = "") -> None:
        """Set the count (``completed``) or add to it (``advance``); ``info`` is shown after it."""
        with self._lock:
            self.completed = completed if completed is not None else self.completed + advance
            self.info = info or self.info
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=self.completed, info=self.info)
            elif self.mode == "plain" and self.clock() - self._last_line >= self.interval_s:
                self._print_line()

    def _print_line(self, state: str = "") -> None:
        self._last_line = self.clock()
        self._lines += 1
        count = f"{self.completed:,}" + (f"/{self.total:,}" if self.total else "")
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        elapsed = f"{self._last_line - self._t0:.0f} s"
        parts = [f"{count}{unit}{pct}", elapsed, self.info, state]
        print(
            f"[fedray] {self.description}: " + ", ".join(p for p in parts if p),
            file=sys.stdout,
            flush=True,
        )


def track(
    items: Iterable[T], description: str, *, unit: str = "documents", mode: Mode | None = None
) -> Iterator[T]:
    """Yield ``items`` while counting them on a progress display that starts at the first item
    (an iterable never consumed shows nothing) and closes when the items run out."""
    it = iter(items)
    try:
        first = next(it)
    except StopIteration:
        return
    with Progress(description, unit=unit, transient=False, mode=mode) as p:
        p.update(advance=1)
        yield first
        for item in it:
            p.update(advance=1)
            yield item


# --------------------------------------------------------------------------------------------
# Federated rounds, from the run's metrics.jsonl


def round_info(rec: Mapping[str, Any]) -> str:
    """What the bar shows after a round's count: its global metric and time."""
    ev = rec.get("eval") if isinstance(rec.get("eval"), Mapping) else {}
    parts = []
    for key in ("accuracy", "macro-f1", "perplexity"):
        v = ev.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{key} {v:.4g}")
    t = rec.get("round_time_s")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        parts.append(f"{t:.1f} s/round")
    return "  ".join(parts)


class MetricsTail:
    """Calls ``on_record`` for each JSON object appended to a metrics.jsonl (only those
    written after it started), from a thread, every ``poll_s``; :meth:`stop` reads the rest."""

    def __init__(
        self, path: Path, on_record: Callable[[dict[str, Any]], None], poll_s: float = 0.5
    ) -> None:
        self.path, self.on_record, self.poll_s = path, on_record, poll_s
        self._offset = path.stat().st_size if path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fedray-tail")

    def __enter__(self) -> MetricsTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.drain()

    def drain(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                self.on_record(rec)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.drain()


class round_progress:
    """A bar of the run's rounds (``num_rounds``; round 0 evaluates the starting model) fed by
    ``RUN_DIR/metrics.jsonl``; nothing without a terminal (the round table prints each round)."""

    def __init__(self, run_dir: Path, num_rounds: int, mode: Mode | None = None) -> None:
        self.bar = Progress("rounds", total=num_rounds, plain=False, mode=mode)
        path = Path(run_dir) / "metrics.jsonl"
        self.tail = MetricsTail(path, self._on_record)
        if self.bar.mode != "off" and path.is_file():  # a resumed run: start where it stopped
            from orchestrator.runs import read_metrics

            for rec in read_metrics(path):
                if isinstance(rec, dict):
                    self._on_record(rec)

    def _on_record(self, rec: dict[str, Any]) -> None:
        r = rec.get("round")
        if isinstance(r, int) and not isinstance(r, bool) and r >= 0:
            self.bar.update(completed=r, info=round_info(rec))

    def __enter__(self) -> round_progress:
        if self.bar.mode == "off":
            return self  # no terminal: no thread either
        self.bar.start()
        self.tail.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.mode == "off":
            return
        try:
            self.tail.stop()
        finally:
            self.bar.close()


__all__ = [
    "ENV",
    "PLAIN_INTERVAL_S",
    "MetricsTail",
    "Progress",
    "choose_mode",
    "round_info",
    "round_progress",
    "terminal_stream",
    "track",
]
