"""`fedray site` and `fedray server` as a user runs them (console scripts in subprocesses): a
signal stops each command and every process it started, checked by PID with psutil; a taken
`--port` is a one-line error before anything starts.

Each command is started in its own session, like the children it starts, so a signal sent here
reaches the command alone, as `kill PID` does. The three signals are checked side by side, each
on its own command (tests/integration/side_by_side.py): most of each check is waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import psutil
import pytest

from orchestrator.processes import server_session
from orchestrator.processes.launch import flower_env
from orchestrator.processes.network import free_port
from tests.integration.side_by_side import side_by_side

pytestmark = pytest.mark.integration

FEDRAY = str(Path(sys.executable).parent / "fedray")
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "TMPDIR": str(tmp_path),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _gone(pid: int) -> bool:
    """Exited (a zombie left for a non-reaping init in containers counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdlines(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(" ".join(p.cmdline()))
    return out


def _signal_and_check(
    argv: list[str],
    tmp_path: Path,
    ready: Callable[[list[str]], bool],
    what: str,
    sig: signal.Signals,
    code: int,
) -> None:
    """Start ``argv``, wait until ``ready(cmdlines of its descendants)``, send ``sig``; the
    command must exit with ``code`` and no descendant seen on the way may survive."""
    log = (tmp_path / "command.log").open("wb")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(tmp_path),
        cwd=tmp_path,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            tree = _tree(proc.pid)
            seen.update({p.pid: p for p in tree})
            if ready(_cmdlines(tree)):
                break
            assert proc.poll() is None, (tmp_path / "command.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {what}: {_cmdlines(tree)}"
            time.sleep(0.3)
        seen.update({p.pid: p for p in _tree(proc.pid)})
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == code, (tmp_path / "command.log").read_text()[-3000:]
        survivors = [(pid, p.name()) for pid, p in seen.items() if not _gone(pid)]
        assert not survivors, f"survived {sig.name}: {survivors}"
    finally:
        log.close()
        for p in [*seen.values(), *_tree(proc.pid)]:
            if not _gone(p.pid):
                p.kill()  # only if the test already failed: our own descendants, by PID
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain-text SuperLink for `fedray site --insecure` to connect to."""
    state = tmp_path_factory.mktemp("superlink")
    opts = server_session.ServerOptions(port=free_port(), insecure=True, site_auth=False)
    link = server_session.SuperLinkProcess(opts, state, None, extra_env=flower_env(state / "h"))
    try:
        link.start()
        yield link.address
    finally:
        link.stop()


def test_each_signal_stops_fedray_site_and_its_supernode(tmp_path: Path, superlink: str) -> None:
    """SIGINT, SIGTERM and SIGHUP, each to its own `fedray site`, side by side."""
    data = tmp_path / "a.csv"
    data.write_text("text,label\nhello,positive\nbye,negative\n")
    argv = [FEDRAY, "site", "--server", superlink, "--data", str(data), "--insecure"]

    def ready(cmds: list[str]) -> bool:  # flower-supernode and the SuperExec it started
        return any("flower-supernode" in c for c in cmds) and any(
            "flower-superexec" in c for c in cmds
        )

    side_by_side(
        {
            sig.name: partial(
                _signal_and_check, argv, _own(tmp_path, sig), ready, "SuperNode", sig, code
            )
            for sig, code in SIGNALS
        }
    )


def test_each_signal_stops_fedray_server_superlink_and_serverapp(tmp_path: Path) -> None:
    """SIGINT, SIGTERM and SIGHUP, each to its own `fedray server`, side by side."""

    def argv(run: Path) -> list[str]:
        return [
            FEDRAY,
            "server",
            "federation.num_sites=2",
            "federation.round_timeout_s=300",
            f"run.dir={run}",
            "--insecure",
            "--port",
            str(free_port()),
        ]

    def ready(cmds: list[str]) -> bool:  # the SuperLink, its SuperExec, the ServerApp, flwr run
        return all(
            any(name in c for c in cmds)
            for name in ("flower-superlink", "flower-superexec", "flwr-serverapp", "flwr run")
        )

    cases = {}
    for sig, code in SIGNALS:
        own = _own(tmp_path, sig)
        cases[sig.name] = partial(
            _signal_and_check, argv(own / "run"), own, ready, "SuperLink + ServerApp", sig, code
        )
    side_by_side(cases)


def _own(tmp_path: Path, sig: signal.Signals) -> Path:
    d = tmp_path / sig.name
    d.mkdir()
    return d


@pytest.mark.parametrize("command", ["site", "server"])
def test_taken_port_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    data = tmp_path / "a.csv"
    data.write_text("text,label\nhello,positive\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if command == "site":
            argv = [FEDRAY, "site", "--server", "127.0.0.1:1", "--data", str(data), "--insecure"]
        else:
            argv = [FEDRAY, "server", f"run.dir={tmp_path / 'run'}", "--insecure"]
        done = subprocess.run(
            [*argv, "--port", str(port)],
            env=_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and f"port {port} on 127.0.0.1 is already in use" in err[0], err
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()
