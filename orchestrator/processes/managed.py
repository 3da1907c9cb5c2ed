"""Start, watch and stop the long-running processes of a real federation (SuperLink, SuperNode,
and what they spawn).

Every process is started by us (``ManagedProcess.start``), logs to a file, and is stopped by its
PID: SIGTERM, then SIGKILL after a grace period; its descendants (Flower's SuperExec and the
ServerApp/ClientApp processes it spawns) are collected by PID first and stopped the same way, so
nothing outlives a run or a failed test. Nothing here looks processes up by name. Each child runs
in its own session, so a terminal's Ctrl-C reaches fedray alone, which then stops the children in
order (:mod:`orchestrator.processes.signals`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


class ProcessFailed(RuntimeError):
    """A managed process exited (or never became ready); the message holds its log tail."""


WATCH_INTERVAL_S = 0.5
"""How often a running process's descendants are noted (a /proc scan: about a millisecond)."""

_RUNNING: list[ManagedProcess] = []
"""Processes started by this process and not yet stopped (for the final sweep on a signal)."""


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
        self._seen: dict[int, psutil.Process] = {}
        self._seen_lock = threading.Lock()

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
                # Tied to our life: if we die without stopping it (SIGKILL, a crash), it gets
                # SIGTERM and stops its own children in turn (a `fedray site` stops its SuperNode).
                preexec_fn=_parent_death_signal(),
            )
        except FileNotFoundError as e:
            raise ProcessFailed(
                f"cannot start {self.name}: {self.argv[0]!r} not found on PATH. "
                "Install fedray (pip install -e .) in this environment."
            ) from e
        finally:
            logf.close()
        _RUNNING.append(self)
        threading.Thread(target=self._watch, name=f"watch {self.name}", daemon=True).start()
        return self

    def _watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Note its descendants while it runs. A process that exits leaves its children to the
        system's reaper, out of our tree (Ray's raylet and agents once the simulation's driver
        is gone): seen here first, ``stop()`` still finds and waits for them."""
        while self.alive():
            self.descendants()
            time.sleep(interval)

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
        """Its children, grandchildren, ... now, plus those seen earlier that still run (a
        grandchild whose parent already exited is no longer found through the tree). psutil
        refuses to signal a PID that was reused by another process since it was seen."""
        if self.alive():
            with contextlib.suppress(psutil.NoSuchProcess):
                kids = psutil.Process(self.pid).children(recursive=True)
                with self._seen_lock:
                    for p in kids:
                        self._seen.setdefault(p.pid, p)
        with self._seen_lock:
            seen = list(self._seen.values())
        return [p for p in seen if _live(p)]

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
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait ``timeout`` s, then SIGKILL; the same for leftover descendants."""
        if self.popen is None:
            return None
        kids = self._begin_stop()
        self._wait_or_kill(timeout)
        _stop_leftovers(kids, timeout)
        self._forget()
        return self.popen.returncode

    def _begin_stop(self) -> list[psutil.Process]:
        """First step of a stop: note the descendants, SIGTERM the process (no waiting)."""
        if self.popen is None:
            return []
        kids = self.descendants()
        if self.popen.poll() is None:
            self.popen.terminate()
        return kids

    def _wait_or_kill(self, timeout: float) -> None:
        """Wait for the process (SIGKILL after ``timeout`` s). Waiting reaps it: only then do
        its children, which poll whether their parent still exists, see it gone."""
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
            self.popen.kill()
            self.popen.wait(timeout=timeout)

    def _forget(self) -> None:
        # Only after a complete stop: one cut short leaves it listed for the final sweep.
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)


def _stop_leftovers(kids: Sequence[psutil.Process], timeout: float) -> None:
    """Descendants of processes that were stopped and reaped. Flower's children watch their
    parent and exit on their own; give them a moment, then make sure of it (an orphan that does
    not watch would otherwise hold up the stop). The moment is generous because a SuperExec
    that gets SIGTERM while it shuts down by itself ignores it ("Signal 15 ignored due to race
    condition") and then lingers until its next connection retry, seconds later."""
    _, alive = psutil.wait_procs(kids, timeout=min(timeout, 3.0))
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to send the child SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``; what Ray does for the processes of a cluster it starts), or
    ``None`` where that cannot be done. Only from the main thread: Linux ties the signal to the
    *thread* that forked, and another thread may end long before this process does. Everything
    the function needs is looked up here, before the fork; the child only makes two syscalls."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    getppid, kill, sigterm = os.getppid, os.kill, signal.SIGTERM

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if getppid() != parent:  # the parent died before the prctl: nobody will signal us
            kill(os.getpid(), sigterm)

    return set_pdeathsig


def _live(p: psutil.Process) -> bool:
    """Running, the same process as when seen, and not a zombie (an exited orphan that a
    container's non-reaping init leaves behind counts as gone)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_processes() -> list[ManagedProcess]:
    """Processes this process started (``ManagedProcess.start``) and has not stopped yet."""
    return list(_RUNNING)


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
    """Stop in reverse start order; never raises (used in ``finally``). The processes shut down
    together, so stopping several takes as long as the slowest one, not the sum (a SuperNode
    takes seconds to exit): every one gets its SIGTERM, then every one is waited for (and
    reaped, so all their children see their parents gone at once), then the leftovers."""
    stopping: list[tuple[ManagedProcess, list[psutil.Process]]] = []
    for p in reversed(procs):
        try:
            stopping.append((p, p._begin_stop()))
        except Exception as e:  # keep stopping the others
            log.warning("stopping %s failed: %s", p.name, e)
    stopped: list[ManagedProcess] = []
    for p, _ in stopping:
        try:
            p._wait_or_kill(timeout)
            stopped.append(p)
        except Exception as e:
            log.warning("stopping %s failed: %s", p.name, e)
    try:
        _stop_leftovers([k for _, kids in stopping for k in kids], timeout)
    except Exception as e:
        log.warning("stopping leftover child processes failed: %s", e)
        return
    for p in stopped:
        p._forget()


__all__ = [
    "ManagedProcess",
    "ProcessFailed",
    "running_processes",
    "stop_all",
    "wait_until",
]
