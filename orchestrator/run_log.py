"""A quiet console: third-party start-up and info lines go to ``RUN_DIR/run.log`` only.

While ``fedray pretrain`` or ``fedray simulate`` runs, :func:`console_to_run_log` puts a
:class:`ConsoleFilter` in front of ``sys.stdout`` and ``sys.stderr`` (and of the logging
handlers that write to them). Every line is appended to ``RUN_DIR/run.log``; a line that
:func:`is_noise` recognises is kept off the console unless ``logging.verbose`` (``--verbose``)
is set. The filter matches the specific lines listed in :data:`NOISE`, nothing broader, so
errors, tracebacks and any warning not listed still reach the console.

Where the lines come from, and why a filter on this process sees them:

- Ray prints its workers' and actors' output (``(RayTrainWorker pid=...) ...``) on the driver
  through ``sys.stdout``/``sys.stderr``, looked up at each print;
- ``fedray simulate`` echoes the ServerApp's output streamed by ``flwr run --stream`` through
  ``sys.stdout``;
- Python warnings and logging handlers of this process write to the same streams.

Two lines are also prevented at their source (no filter needed): :func:`quiet_env` sets
``DS_ACCELERATOR=cpu`` on machines without CUDA (DeepSpeed's own choice there, minus its
"Setting accelerator to CPU" warning), and the pretraining loop names the loss of models whose
class name transformers does not recognise (GPT-2's ``loss_type=None`` warning).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

RUN_LOG = "run.log"

NOISE: tuple[tuple[str, str], ...] = (
    # Ray (driver): ray.init's banner and a FutureWarning about accelerator env vars (the
    # indented "warnings.warn(" line after it is dropped with it, see ConsoleFilter).
    ("ray", r"Started a local Ray instance\."),
    ("ray", r"Connected to Ray cluster\."),
    ("ray", r"FutureWarning: Tip: In future versions of Ray, Ray will no longer override"),
    # Ray Train: controller and worker set-up/checkpoint INFO lines.
    ("ray-train", r"\(TrainController pid=\d+.*?\) Requesting resources: "),
    ("ray-train", r"\(TrainController pid=\d+.*?\) Attempting to start training worker group"),
    ("ray-train", r"\(TrainController pid=\d+.*?\) Started training worker group of size \d+"),
    ("ray-train", r"\(TrainController pid=\d+.*?\) - \(ip=[^)]*\) world_rank=\d+"),
    ("ray-train", r"\(RayTrainWorker pid=\d+.*?\) Setting up process group for: "),
    ("ray-train", r"\(RayTrainWorker pid=\d+.*?\) Moving model to device: "),
    ("ray-train", r"\(RayTrainWorker pid=\d+.*?\) Wrapping provided model in "),
    ("ray-train", r"\(RayTrainWorker pid=\d+.*?\) Checkpoint successfully created at: "),
    # DeepSpeed: accelerator auto-detection on a machine without CUDA, its INFO lines, its JIT
    # build message, a torch deprecation its ZeRO code triggers (the indented source line after
    # it goes too), and what zero_to_fp32 prints while the export gathers a ZeRO checkpoint.
    ("deepspeed", r"\[real_accelerator\.py:\d+:get_accelerator\] Setting accelerator to CPU\."),
    ("deepspeed", r"\[\d{4}-\d\d-\d\d [\d:,]+\] \[INFO\] \[[\w.]+:\d+:\w+\]"),
    ("deepspeed", r"DeepSpeed deepspeed\.ops\.[\w.]+ built successfully"),
    ("deepspeed", r"FutureWarning: `torch\.distributed\.all_gather_into_tensor` is deprecated"),
    ("deepspeed", r"^Processing zero checkpoint '"),
    ("deepspeed", r"^Parsing checkpoint created by deepspeed=="),
    ("deepspeed", r"^Detected checkpoint of type zero stage "),
    ("deepspeed", r"^Reconstructed (?:fp32|Frozen fp32|Trainable fp32) state dict with "),
    ("deepspeed", r"^Loading checkpoint shards: "),
    # transformers: GPT-2's unrecognised loss type, and save/load progress bars.
    ("transformers", r"`loss_type=None` was set in the config but it is unrecognized"),
    ("transformers", r"^(?:\(\w+ pid=\d+.*?\) )?(?:Writing model shards|Loading weights): "),
    # Flower: `flwr run` CLI chatter, simulation-engine start-up and shutdown.
    ("flower", r"^Using SuperLink: "),
    ("flower", r"^Successfully started run \d+"),
    ("flower", r"Starting logstream for run_id"),
    ("flower", r"Federation `[^`]*` \(\d+ simulated SuperNodes\)"),
    ("flower", r"^Successfully installed \S+ to "),
    ("flower", r"Manually terminating ClientAppActor"),
    ("flower", r"^INFO\s*:\s*$"),
    ("flower", r"default simulated SuperNodes changed|To change federation size"),
    ("flower", r"flwr federation simulation-config"),
    # Flower (fedray server / fedray site): SuperLink/SuperNode/SuperExec start-up, the app
    # processes they start, and the per-message traffic log of a SuperNode.
    ("flower", r"Start `flwr-(?:serverapp|clientapp)` process"),
    ("flower", r"Starting Flower (?:SuperNode|SuperExec)\s*$"),
    ("flower", r"FastAPI lifespan: (?:startup|shutdown)"),
    ("flower", r"^INFO\s*:\s+\[RUN \d+\]\s*$"),
    ("flower", r"^INFO\s*:\s+(?:Receiving|Sending): \w+ message \(ID: [0-9a-f]+\)"),
    ("flower", r"^INFO\s*:\s+(?:Received|Sent) successfully\s*$"),
    # uvicorn inside the SuperNode (its local ClientApp I/O API).
    (
        "uvicorn",
        r"^INFO:\s+(?:Started server process \[\d+\]|Waiting for application startup\."
        r"|Application startup complete\.|Uvicorn running on http://127\.0\.0\.1:\d+ )",
    ),
    (
        "uvicorn",
        r"^INFO:\s+(?:Shutting down|Waiting for application shutdown\."
        r"|Application shutdown complete\.|Finished server process \[\d+\])\s*$",
    ),
    # datasets: a site reading its CSV/JSON file ("Generating train split: 300 examples ...").
    ("datasets", r"^(?:\(\w+ pid=\d+.*?\) )?Generating \w+ split: "),
)
"""(source, regex) of each console line routed to run.log only. Regexes are searched in the
line with terminal colour codes removed."""

_NOISE = re.compile("|".join(f"(?:{rx})" for _, rx in NOISE))
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WARNING_LINE = re.compile(r"\b\w*Warning: ")
_RAY_PREFIX = re.compile(r"^\((?:[\w.]+ )?pid=[^)]*\) ")
"""How Ray prefixes a line it prints for a worker or actor, e.g. ``(RayTrainWorker pid=42) ``."""


def plain(line: str) -> str:
    """``line`` without terminal colour codes and carriage-return redraws (tqdm keeps its last
    redraw)."""
    text = _ANSI.sub("", line)
    if "\r" in text.rstrip("\r\n"):
        text = text.rstrip("\r\n").rsplit("\r", 1)[-1] + ("\n" if text.endswith("\n") else "")
    return text


def is_noise(line: str) -> bool:
    """Is this console line one of :data:`NOISE`?"""
    text = _ANSI.sub("", line).replace("\r", "\n")
    return any(_NOISE.search(part) for part in text.splitlines() if part.strip())


class ConsoleFilter(io.TextIOBase):
    """A text stream in front of a console stream: whole lines go to ``log`` (if any) and,
    unless they are noise (and not ``verbose``), to ``console``. Thread-safe; partial lines wait
    for their newline. An indented line right after a hidden warning (its source line, as
    ``warnings`` prints it) and blank lines right after a hidden line are hidden with it. After
    :meth:`detach_log` it passes everything through. ``plain_console``: console lines go out as
    :func:`plain` text too (a console that is no terminal: a pipe, CI, a Ray Job's log)."""

    def __init__(
        self,
        console: IO[str],
        log: IO[str] | None,
        verbose: bool = False,
        plain_console: bool = False,
    ) -> None:
        super().__init__()
        self.console, self.log, self.verbose = console, log, verbose
        self.plain_console = plain_console
        self._buf = ""
        self._lock = threading.RLock()
        self._hide_indented = False
        self._prev_hidden = False

    # ---- stream protocol ---------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            if self.log is None:
                self.console.write(s)
                return len(s)
            self._buf += s
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                self._line(line + "\n")
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self.log is not None:
                self.log.flush()
            self.console.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.console, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:  # buffer, errors, ... of the console stream
        return getattr(self.console, name)

    # ---- lines -------------------------------------------------------------------------------

    def _line(self, line: str) -> None:
        assert self.log is not None
        stripped = plain(line)
        self.log.write(stripped)
        shown = stripped if self.plain_console else line
        if self.verbose:
            self.console.write(shown)
            return
        text = _RAY_PREFIX.sub("", _ANSI.sub("", line))
        if not text.strip():  # a blank line after a hidden one belongs to it (progress bars)
            hidden = self._prev_hidden
        else:
            hidden = is_noise(line) or (self._hide_indented and text[:1] in (" ", "\t"))
        self._hide_indented = hidden and bool(_WARNING_LINE.search(text))
        self._prev_hidden = hidden
        if not hidden:
            self.console.write(shown)
            self.console.flush()

    def redirect_console(self, stream: IO[str]) -> IO[str]:
        """Send the lines meant for the console to ``stream`` from now on (a live progress bar
        prints them above itself); returns the previous console stream, to put back."""
        with self._lock:
            old, self.console = self.console, stream
        return old

    def detach_log(self) -> None:
        """Write out a pending partial line and stop using the log file (pass-through)."""
        with self._lock:
            if self._buf and self.log is not None:
                rest, self._buf = self._buf, ""
                self._line(rest)
            self.log = None


def quiet_env() -> dict[str, str]:
    """Environment that keeps known noise from being produced at all, for this process and the
    processes it starts (Ray workers of an embedded Ray, the Flower simulation).

    ``DS_ACCELERATOR=cpu`` where torch sees no CUDA: DeepSpeed picks the CPU accelerator there
    anyway, but warns "Setting accelerator to CPU" in every process that imports it (even
    transformers' ``save_pretrained`` does, through accelerate). Never set where CUDA is visible,
    and never overrides a value the user set.
    """
    import torch

    if "DS_ACCELERATOR" in os.environ or torch.cuda.is_available():
        return {}
    return {"DS_ACCELERATOR": "cpu"}


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or exotic streams
        return False


def _console_handlers(streams: tuple[Any, ...]) -> list[logging.StreamHandler]:
    """Logging handlers (any logger) that write to one of ``streams``."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found: list[logging.StreamHandler] = []
    for lg in loggers:
        for h in lg.handlers:
            if (
                isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)
                # logging's last-resort handler looks sys.stderr up at each record already.
                and not isinstance(getattr(type(h), "stream", None), property)
                and any(h.stream is s for s in streams)
                and h not in found
            ):
                found.append(h)
    return found


@contextlib.contextmanager
def console_to_run_log(run_dir: Path, verbose: bool = False) -> Iterator[Path]:
    """Route this process's console through :class:`ConsoleFilter`\\ s that append every line to
    ``RUN_DIR/run.log`` and hide :data:`NOISE` unless ``verbose``; yields the log's path.

    Also applies :func:`quiet_env` to this process while it runs. An exception leaving the block
    is written to run.log too, and then propagates (the caller shows it on the console).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOG
    env = quiet_env()
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    old_out, old_err = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8", errors="replace") as logf:
        logf.write(
            f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} fedray {' '.join(sys.argv[1:])} ====\n"
        )
        # Colour codes from Flower's logger and redraws only make sense on a terminal.
        out = ConsoleFilter(old_out, logf, verbose, plain_console=not _is_terminal(old_out))
        err = ConsoleFilter(old_err, logf, verbose, plain_console=not _is_terminal(old_err))
        handlers = _console_handlers((old_out, old_err, sys.__stdout__, sys.__stderr__))
        saved_streams = [(h, h.stream) for h in handlers]
        for h, stream in saved_streams:
            h.setStream(err if stream in (old_err, sys.__stderr__) else out)
        sys.stdout, sys.stderr = out, err
        try:
            yield path
        except BaseException:
            err.detach_log()
            out.detach_log()
            logf.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            for h, stream in saved_streams:
                h.setStream(stream)
            # Handlers created meanwhile keep these filters: after detaching they pass through.
            out.detach_log()
            err.detach_log()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
