"""Ties every process a test run starts to the life of that run: ``python -m tests.reaper TOKEN
PID`` waits until the pytest controller ``PID`` is gone (its end of our stdin closes, or the PID
no longer runs), then SIGKILLs every process that carries ``FEDRAY_TEST_RUN=TOKEN`` in its
environment or descends from one that does (noted every second while the run lives), until none
is left.

conftest.py starts one per run (in the controller, not in xdist workers) and puts the token in
``os.environ`` before anything else starts, so every descendant inherits it: xdist workers, Ray's
GCS/raylet/workers, SuperLinks, ``fedray site`` processes, their SuperNodes and ClientApps, and
processes that were orphaned on the way (re-parented to init, out of any tree walk). The token is
unique per run: a test run never touches another run's processes, nor anything it did not start.

This runs in its own session, so a Ctrl-C or a kill of pytest's process group does not reach it;
it exits when its sweep finds nothing twice in a row.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

import psutil

ENV = "FEDRAY_TEST_RUN"
POLL_S = 1.0


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours
        return b""


def scan(token: str, known: dict[int, psutil.Process]) -> None:
    """Add to ``known`` every process carrying the token and every descendant of one, and drop
    those that ended. Descendants count because a process that sets its title (Ray's agents and
    dashboard modules, through setproctitle) overwrites what /proc shows of its environment; they
    are seen through their parent while it lives, and remembered after it died."""
    needle = f"{ENV}={token}".encode()
    me = os.getpid()
    children: dict[int, list[psutil.Process]] = {}
    marked: list[psutil.Process] = []
    for p in psutil.process_iter(["ppid"]):
        if p.pid == me:
            continue
        children.setdefault(p.info["ppid"], []).append(p)
        if needle in _environ(p.pid).split(b"\0"):
            marked.append(p)
    todo = list(marked)
    while todo:
        p = todo.pop()
        if p.pid == me:
            continue
        old = known.get(p.pid)
        if old is None or not _running(old):
            known[p.pid] = p
        todo += children.get(p.pid, [])
    for pid in [pid for pid, p in known.items() if not _running(p)]:
        del known[pid]


def _running(p: psutil.Process) -> bool:
    """Still the process first seen (psutil compares start times), and not a zombie."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sweep(token: str, known: dict[int, psutil.Process], limit_s: float = 60.0) -> int:
    """SIGKILL (by PID, through psutil, which refuses a reused PID) everything ``scan`` finds
    until two scans in a row find nothing (a dying parent may still start a child). Returns how
    many processes it killed."""
    killed: set[int] = set()
    quiet = 0
    deadline = time.monotonic() + limit_s
    while quiet < 2 and time.monotonic() < deadline:
        scan(token, known)
        procs = list(known.values())
        quiet = 0 if procs else quiet + 1
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
                killed.add(p.pid)
        psutil.wait_procs(procs, timeout=2)
        time.sleep(0.2)
    return len(killed)


def wait_for_end(controller: int, token: str, known: dict[int, psutil.Process]) -> None:
    """Until stdin reaches EOF (the controller exited, however) or the controller's PID ends;
    meanwhile the run's processes are noted every ``POLL_S`` seconds."""
    try:
        proc = psutil.Process(controller)
    except psutil.NoSuchProcess:
        return
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return
        if not _running(proc):
            return
        scan(token, known)


def main(argv: list[str]) -> int:
    token, controller = argv[0], int(argv[1])
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    known: dict[int, psutil.Process] = {}
    wait_for_end(controller, token, known)
    n = sweep(token, known)
    if n:
        print(f"tests.reaper: killed {n} process(es) left by test run {token}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
