"""A test run that is killed leaves no process behind: a pytest running a real federation
(tests/integration/killable_run.py: embedded Ray, `fedray server`, `fedray site`) is killed
mid-round, by SIGKILL (with and without xdist workers) or by Ctrl-C twice, and every process
that descended from it, seen by PID before the kill, must be gone within a bounded time. The
three kills run side by side, each on its own run (tests/integration/side_by_side.py).

What makes it so: tests/conftest.py's reaper (tests/reaper.py), which SIGKILLs every process
carrying the run's token once the controller is gone, and ``ManagedProcess``'s parent-death
signal, which makes a `fedray site` or `fedray server` whose parent died stop its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import psutil
import pytest

from tests.integration.side_by_side import side_by_side

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests/integration/killable_run.py"
GONE_WITHIN_S = 60


def _gone(p: psutil.Process) -> bool:
    """Exited (psutil compares the start time, so a reused PID counts as gone; a zombie left
    for a non-reaping init in containers counts as exited)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def _cmdline(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline())
    return "?"


CASES = {
    "sigkill": ("sigkill", "0"),
    "sigkill-xdist-controller": ("sigkill", "1"),
    "ctrl-c-twice": ("ctrl-c-twice", "0"),
}


def test_killed_test_run_leaves_no_process(tmp_path: Path) -> None:
    """Each way of killing a run, on its own run, side by side (most of each is a wait)."""
    side_by_side(
        {
            name: partial(_kill_mid_round_and_check, tmp_path / name, how, workers)
            for name, (how, workers) in CASES.items()
        }
    )


def _kill_mid_round_and_check(tmp_path: Path, how: str, workers: str) -> None:
    tmp_path.mkdir(parents=True)
    log_path = tmp_path / "pytest.log"
    argv = [sys.executable, "-m", "pytest", TARGET, "-q", "-p", "no:cacheprovider"]
    argv += ["-n", workers, "--basetemp", str(tmp_path / "bt"), "-o", "addopts="]
    log = log_path.open("wb")
    # Its own session: the Ctrl-C below reaches its process group, as a terminal's would.
    inner = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )
    seen: dict[int, psutil.Process] = {inner.pid: psutil.Process(inner.pid)}
    try:
        deadline = time.monotonic() + 300
        while True:  # mid-round: Ray up, and a ClientApp training for the site
            tree = _tree(inner.pid)
            seen.update({p.pid: p for p in tree})
            cmds = [_cmdline(p) for p in tree]
            if any("flwr-clientapp" in c for c in cmds) and any("raylet" in c for c in cmds):
                break
            assert inner.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"never mid-round: {cmds}"
            time.sleep(0.3)
        seen.update({p.pid: p for p in _tree(inner.pid)})
        names = {_cmdline(p) for p in seen.values()}
        for part in ("fedray server", "fedray site", "flower-superlink", "flower-supernode"):
            assert any(part in c for c in names), (part, names)
        # The test's own process starts `fedray server`: the controller itself, or its worker.
        runner = next(p for p in seen.values() if "fedray server" in _cmdline(p)).ppid()
        assert (runner == inner.pid) == (workers == "0"), (runner, inner.pid)

        if how == "sigkill":
            inner.kill()
        else:
            os.killpg(inner.pid, signal.SIGINT)
            time.sleep(1.0)
            os.killpg(inner.pid, signal.SIGINT)
        inner.wait(timeout=GONE_WITHIN_S)
        end = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < end and not all(_gone(p) for p in seen.values()):
            time.sleep(0.5)
        survivors = [(p.pid, _cmdline(p)) for p in seen.values() if not _gone(p)]
        assert not survivors, f"{len(survivors)} of {len(seen)} survived {how}: {survivors}"
    finally:
        log.close()
        for p in seen.values():  # only if the test failed: our own descendants, by PID
            if not _gone(p):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        if inner.poll() is None:
            inner.kill()
            inner.wait()
