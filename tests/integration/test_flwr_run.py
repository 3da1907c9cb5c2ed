"""The stock Flower CLI: `flwr run .` runs the project's ServerApp/ClientApp in a local
simulation, with a fresh FLWR_HOME and its own ports.

`flwr run` against the ``:local:`` address starts a detached ``flower-superlink --simulation``
on FLWR_LOCAL_SUPERLINK_HTTP_API_PORT; we point that at a free port and, in ``finally``, stop
the process listening there (and everything it started) by PID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.processes.network import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _stop_listener(port: int) -> None:
    import psutil

    for conn in psutil.net_connections("tcp"):
        if (
            conn.laddr
            and conn.laddr.port == port
            and conn.status == psutil.CONN_LISTEN
            and conn.pid
        ):
            proc = psutil.Process(conn.pid)
            family = [proc, *proc.children(recursive=True)]
            for p in family:
                p.terminate()
            _, alive = psutil.wait_procs(family, timeout=15)
            for p in alive:
                p.kill()


def test_flwr_run_local_simulation(tmp_path: Path):
    # The CLIs of the environment running the tests (the venv need not be activated): `flwr`
    # itself, and the `flower-superlink` that `flwr run` starts by name from PATH.
    bin_dir = str(Path(sys.executable).parent)
    flwr = shutil.which("flwr", path=bin_dir)
    assert flwr, "the flwr CLI is installed with flwr[simulation]"
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    http_port, control_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        # Ray inside flwr-simulation calls ray.init() with no address: never join another cluster.
        "RAY_ADDRESS": "local",
        "TOKENIZERS_PARALLELISM": "false",
    }
    run_dir = tmp_path / "run"
    overrides = (
        "federation.num_sites=2 federation.num_rounds=1 federation.min_sites=1 "
        "partition.max_examples_per_site=100 finetune.local_steps=3"
    )
    try:
        proc = subprocess.run(
            [
                flwr,
                "run",
                ".",
                "--stream",
                "--run-config",
                f"overrides='{overrides}' run-dir='{run_dir}'",
                "--federation-config",
                "num-supernodes=2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        _stop_listener(http_port)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1], out[-4000:]
    assert (run_dir / "export" / "config.json").is_file()
