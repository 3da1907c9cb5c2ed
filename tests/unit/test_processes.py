"""Process management without Flower: signals stop a command and everything it started (by
PID), descendants are remembered, ports are checked before anything binds them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.processes.launch import is_loopback
from orchestrator.processes.managed import (
    WATCH_INTERVAL_S,
    ManagedProcess,
    running_processes,
    stop_all,
    wait_until,
)
from orchestrator.processes.network import PortInUse, check_port_free, free_port, port_free
from orchestrator.processes.signals import Interrupted, interrupted_exit_code

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for `fedray site` / `fedray server`: under stop_children_on_signals it starts a
# ManagedProcess (a "SuperNode") that starts a grandchild (its "SuperExec"), prints every PID as
# JSON, and waits. Exit code as the commands compute it.
COMMAND = """
import json, sys, time
from pathlib import Path
from orchestrator.processes.managed import ManagedProcess
from orchestrator.processes.signals import interrupted_exit_code, stop_children_on_signals

CHILD = '''
import subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("grandchild", gc.pid, flush=True)
time.sleep(600)
'''

def body():
    p = ManagedProcess("child", [sys.executable, "-c", CHILD], Path(sys.argv[1])).start()
    while "grandchild" not in p.log_tail():
        time.sleep(0.05)
    gc = int(p.log_tail().split("grandchild ")[1].split()[0])
    try:
        print(json.dumps({"child": p.pid, "grandchild": gc}), flush=True)
        time.sleep(600)
    finally:
        print("finally ran", flush=True)
    return 0

try:
    with stop_children_on_signals():
        code = body()
except KeyboardInterrupt as e:
    code = interrupted_exit_code(e)
sys.exit(code)
"""


def _gone(pid: int) -> bool:
    """Exited (a zombie left for a non-reaping init in containers counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_command(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMAND, str(tmp_path / "child.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    pids = json.loads(line)
    return proc, pids


# Starts real process trees and waits on signals: integration tier (keeps the unit tier fast).
@pytest.mark.integration
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
)
def test_signal_stops_the_command_and_its_whole_tree(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    proc, pids = _start_command(tmp_path)
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == code
        assert "finally ran" in out  # the command's own clean-up ran
        for name, pid in pids.items():
            assert _gone(pid), f"{name} {pid} survived {sig.name}"
    finally:
        proc.kill()
        for pid in pids.values():
            if not _gone(pid):
                psutil.Process(pid).kill()


@pytest.mark.integration
def test_a_second_signal_does_not_cut_the_clean_up_short(tmp_path: Path) -> None:
    proc, pids = _start_command(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 143  # the first signal decides
        assert all(_gone(pid) for pid in pids.values())
    finally:
        proc.kill()


def test_interrupted_exit_codes() -> None:
    assert interrupted_exit_code(Interrupted(signal.SIGTERM)) == 143
    assert interrupted_exit_code(Interrupted(signal.SIGHUP)) == 129
    assert interrupted_exit_code(KeyboardInterrupt()) == 130
    assert str(Interrupted(signal.SIGTERM)) == "stopped by SIGTERM"
    assert isinstance(Interrupted(signal.SIGTERM), KeyboardInterrupt)


@pytest.mark.integration
def test_an_orphaned_grandchild_seen_earlier_is_still_stopped(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time\n"
        "gc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('grandchild', gc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    p = ManagedProcess("parent", [sys.executable, "-c", script], tmp_path / "p.log").start()
    try:
        wait_until(lambda: "grandchild" in p.log_tail(), 20, "grandchild", watch=[p])
        gc = int(p.log_tail().split("grandchild ")[1].split()[0])
        assert gc in {k.pid for k in p.descendants()}
        psutil.Process(p.pid).kill()  # the parent dies alone: its child is reparented
        p.popen.wait(timeout=10)  # type: ignore[union-attr]
        assert not _gone(gc)
        p.stop(timeout=2)
        assert _gone(gc)
    finally:
        p.stop(timeout=1)


@pytest.mark.integration
def test_a_grandchild_left_by_a_child_that_exited_on_its_own_is_stopped(tmp_path: Path) -> None:
    """Nobody asks for the tree while the child runs (as with a simulation whose Ray outlives the
    driver): the watcher noted the grandchild, so ``stop()`` still ends it."""
    script = (
        "import subprocess, sys, time\n"
        "gc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('grandchild', gc.pid, flush=True)\n"
        f"time.sleep({4 * WATCH_INTERVAL_S})\n"
    )
    p = ManagedProcess("parent", [sys.executable, "-c", script], tmp_path / "p.log").start()
    try:
        p.popen.wait(timeout=30)  # type: ignore[union-attr]
        gc = int(p.log_tail().split("grandchild ")[1].split()[0])
        assert not _gone(gc)
        p.stop(timeout=2)
        assert _gone(gc)
    finally:
        p.stop(timeout=1)


# A parent that starts two sleepers through ManagedProcess: one from the main thread, one from a
# thread that ends at once; then it waits to be killed.
PARENT_OF_SLEEPERS = """
import json, sys, threading, time
from pathlib import Path
from orchestrator.processes.managed import ManagedProcess
argv = [sys.executable, "-c", "import time; time.sleep(600)"]
main = ManagedProcess("main", argv, Path(sys.argv[1]) / "main.log").start()
box = {}
t = threading.Thread(target=lambda: box.update(p=ManagedProcess("t", argv, Path(sys.argv[1]) / "t.log").start()))
t.start(); t.join()
print(json.dumps({"main": main.pid, "thread": box["p"].pid}), flush=True)
time.sleep(600)
"""


@pytest.mark.integration
def test_a_child_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL of a fedray process (nothing of it runs to stop its children)
    still ends what it started from its main thread. One started from another thread is not
    tied to that thread's end (Linux would signal it when the thread exits)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_OF_SLEEPERS, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        time.sleep(0.5)
        assert not _gone(pids["thread"])  # its thread ended; it runs on
        assert not _gone(pids["main"])
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(pids["main"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pids["main"]), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        for pid in pids.values():
            if not _gone(pid):
                psutil.Process(pid).kill()


def test_started_processes_are_listed_until_stopped(tmp_path: Path) -> None:
    p = ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log"
    )
    assert p not in running_processes()
    p.start()
    try:
        assert p in running_processes()
    finally:
        p.stop(timeout=2)
    assert p not in running_processes()


# Exits 0.5 s after SIGTERM (as a SuperNode takes seconds to shut down).
SLOW_TO_STOP = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_all_stops_processes_together_not_one_after_another(tmp_path: Path) -> None:
    procs = [
        ManagedProcess(f"slow{i}", [sys.executable, "-c", SLOW_TO_STOP], tmp_path / f"{i}.log")
        for i in range(4)
    ]
    try:
        for p in procs:
            p.start()
        wait_until(lambda: all("ready" in p.log_tail() for p in procs), 10, "handlers", procs)
        t0 = time.monotonic()
        stop_all(procs)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.stop(timeout=1)
    assert [p.returncode for p in procs] == [0, 0, 0, 0]  # each ran its SIGTERM handler
    assert not set(procs) & set(running_processes())
    assert took < 1.5, took  # one after another: >= 4 x 0.5 s


def test_port_checks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        assert not port_free("0.0.0.0", port)  # a wildcard bind conflicts with it too
        with pytest.raises(PortInUse, match=f"--port {port}: port {port} on 127.0.0.1") as e:
            check_port_free("127.0.0.1", port, "--port", "pick another")
        assert "\n" not in str(e.value)
        assert isinstance(e.value, ValueError)  # a usage error (exit 2)
    assert port_free("127.0.0.1", port)
    p1, p2 = free_port(), free_port()
    assert port_free("127.0.0.1", p1) and port_free("127.0.0.1", p2)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("fl.example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_flower_env_shortens_the_superexec_poll_unless_the_user_set_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.processes.launch import SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S, flower_env

    monkeypatch.delenv(SUPEREXEC_POLL_ENV, raising=False)
    assert flower_env(tmp_path)[SUPEREXEC_POLL_ENV] == SUPEREXEC_POLL_S
    monkeypatch.setenv(SUPEREXEC_POLL_ENV, "2.5")
    assert flower_env(tmp_path)[SUPEREXEC_POLL_ENV] == "2.5"


def test_flower_reads_the_superexec_poll_interval_from_that_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins the upstream behaviour flower_env relies on: Flower 1.41 has no flag for it, only
    this environment variable, read by a private function (called here, in a test only)."""
    from flwr.supercore.superexec import run_superexec

    from orchestrator.processes.launch import SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S

    monkeypatch.setenv(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)
    assert run_superexec._get_task_poll_interval() == float(SUPEREXEC_POLL_S)


def test_ray_reads_its_dashboard_module_wait_from_that_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins the Ray setting local_ray relies on: the dashboard reads this variable at import
    (Ray 2.55: 30 s by default) as its wait for each module subprocess."""
    import importlib

    import ray.dashboard.consts as consts

    from orchestrator.cluster import DASHBOARD_READY_ENV, DASHBOARD_READY_S

    monkeypatch.setenv(DASHBOARD_READY_ENV, DASHBOARD_READY_S)
    try:
        assert (
            float(DASHBOARD_READY_S)
            == importlib.reload(consts).SUBPROCESS_MODULE_WAIT_READY_TIMEOUT
        )
    finally:
        monkeypatch.undo()
        importlib.reload(consts)
