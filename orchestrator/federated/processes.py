"""Start, watch and stop the long-running Flower processes of a real federation.

Every process is started by us (``ManagedProcess.start``), logs to a file, and is stopped by its
PID: SIGTERM, then SIGKILL after a grace period; its descendants (Flower's SuperExec and the
ServerApp/ClientApp processes it spawns) are collected by PID first and stopped the same way, so
nothing outlives a run or a failed test. Nothing here looks processes up by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


class ProcessFailed(RuntimeError):
    """A managed process exited (or never became ready); the message holds its log tail."""


def fedray_root() -> Path:
    """The directory holding the ``orchestrator``, ``clients`` and ``strategies`` packages that
    this process imported (a source checkout, or site-packages)."""
    import orchestrator

    return Path(orchestrator.__file__).resolve().parent.parent


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: no runtime ``uv sync``, no update check, a private
    ``FLWR_HOME``, and this interpreter's ``bin/`` first on PATH (Flower starts ``flwr-serverapp``
    / ``flwr-clientapp`` by name, which must be the ones installed next to fedray). When fedray
    runs from a source directory, that directory goes first on PYTHONPATH, so the ServerApp and
    ClientApps Flower starts import the same fedray as this process."""
    import sys

    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    root = fedray_root()
    if root.name != "site-packages":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


class ManagedProcess:
    """One child process with a log file; ``stop()`` is idempotent and safe in ``finally``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it open)
        log.info("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.log_path)
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                # Own session: a Ctrl-C in the terminal reaches fedray, which then stops the
                # children in order, instead of reaching every process at once.
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise ProcessFailed(
                f"cannot start {self.name}: {self.argv[0]!r} not found on PATH. "
                "Install fedray (pip install -e .) in this environment."
            ) from e
        finally:
            logf.close()
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        """Raise ``ProcessFailed`` with the log tail when the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def descendants(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the process and all its descendants (by PID)."""
        for p in [*self.descendants()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_tree(self) -> None:
        """SIGKILL the whole tree now (what a crashed machine looks like); then reap."""
        kids = self.descendants()
        self.signal_tree(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        psutil.wait_procs(kids, timeout=5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait ``timeout`` s, then SIGKILL; the same for leftover descendants."""
        if self.popen is None:
            return None
        kids = self.descendants()
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        # Flower's children watch their parent and exit on their own; make sure of it.
        _, alive = psutil.wait_procs(kids, timeout=min(timeout, 3.0))
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(alive, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=timeout)
        return self.popen.returncode


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    watch: Sequence[ManagedProcess] = (),
    interval: float = 0.2,
) -> None:
    """Poll ``ready()`` until true; fail early (with the log) if a watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for p in watch:
            p.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail(15)}" for p in watch)
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(interval)


def stop_all(procs: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop in reverse start order; never raises (used in ``finally``)."""
    for p in reversed(procs):
        try:
            p.stop(timeout)
        except Exception as e:  # keep stopping the others
            log.warning("stopping %s failed: %s", p.name, e)


__all__ = [
    "ManagedProcess",
    "ProcessFailed",
    "fedray_root",
    "flower_env",
    "port_open",
    "stop_all",
    "wait_until",
]
