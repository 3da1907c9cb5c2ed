"""The Flower CLI (``flwr``) against a SuperLink fedray reaches through a private ``FLWR_HOME``:
register site keys, submit a job and stream its output, ask for its final status.

``submit_job`` is the one way fedray runs a job on a SuperLink, for real sites
(``fedray server``) and for the simulation engine (``fedray simulate``) alike: write the app
directory and the run config (the whole resolved job as ``config-yaml``, and ``run-dir``), run
``flwr run --stream`` and echo its lines, then read the run directory's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.processes.launch import (
    CLIENTAPP,
    SERVERAPP,
    submit_argv,
    write_app_dir,
    write_run_config,
)
from orchestrator.runs import read_metrics

log = logging.getLogger(__name__)


def flwr(args: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> str:
    """Run ``flwr ARGS`` (JSON output); raise with its message on failure."""
    proc = subprocess.run(
        ["flwr", *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`flwr {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc.stdout


def _json_tail(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in flwr output: {text[-500:]}")
    return json.loads(text[start:])


# --------------------------------------------------------------------------------------------
# Site keys


def site_public_keys(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and directories (every ``*.pub`` inside) into a sorted list of key files."""
    keys: list[Path] = []
    for p in (Path(x).expanduser().absolute() for x in paths):
        if p.is_dir():
            found = sorted(p.glob("*.pub"))
            if not found:
                raise FileNotFoundError(f"{p} holds no *.pub site keys (see `fedray site-key`)")
            keys += found
        elif p.is_file():
            keys.append(p)
        else:
            raise FileNotFoundError(f"site key {p} does not exist")
    return keys


def register_site_keys(
    public_keys: Sequence[Path], env: Mapping[str, str]
) -> dict[str, int | None]:
    """Register each site's public key with the SuperLink (``flwr supernode register``).

    Returns ``{key file name: node id}``; a key registered earlier (a SuperLink with a
    persistent ``--database``) maps to None.
    """
    from orchestrator.processes.credentials import load_site_public_key

    out: dict[str, int | None] = {}
    for pub in public_keys:
        load_site_public_key(pub)  # clear error before Flower's
        name = pub.name.removesuffix(".pub")
        res = _json_tail(
            flwr(["supernode", "register", str(pub), "--name", name, "--format", "json"], env)
        )
        if res.get("success") and "node-id" in res:
            out[name] = int(res["node-id"])
        elif "already in use" in str(res.get("error-message", "")).lower():
            out[name] = None  # registered earlier (the SuperLink keeps keys in its database)
        else:
            raise RuntimeError(
                f"registering site key {pub} failed: {res.get('error-message', res)}"
            )
        log.info("registered site key %s -> node %s", pub, out[name])
    return out


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class ServerRun:
    """What a finished run on a SuperLink left behind."""

    run_dir: Path
    run_id: int | None
    status: str
    metrics: list[dict[str, Any]]

    @property
    def export_dir(self) -> Path:
        return self.run_dir / "export"

    @property
    def ok(self) -> bool:
        return self.status.startswith("finished:completed")


def _echo(
    proc: subprocess.Popen[str], out: IO[str], logf: IO[str] | None, hide: re.Pattern[str] | None
) -> int | None:
    """Copy ``proc``'s output to ``logf`` and, unless ``hide`` matches a line, to ``out``, line
    by line; return the run id."""
    run_id: int | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if hide is None or not hide.search(line):
            out.write(line)
            out.flush()
        if logf:
            logf.write(line)
            logf.flush()
        m = re.search(r"started run (\d+)", line)
        if m and run_id is None:
            run_id = int(m.group(1))
    return run_id


def submit(
    app_dir: Path,
    run_config: Path,
    env: Mapping[str, str],
    out: Any = None,
    log_path: Path | None = None,
    federation_config: Mapping[str, Any] | None = None,
    hide: re.Pattern[str] | None = None,
) -> tuple[int | None, str]:
    """``flwr run APP fedray --run-config FILE --stream``: echo its lines (those ``hide``
    matches go to ``log_path`` only), return (run id, final status from ``flwr ls``).
    ``federation_config``: the simulation engine's settings (``num-supernodes``,
    ``client-resources-num-cpus``, ...)."""
    argv = submit_argv(app_dir, run_config, federation_config)
    log.info("submitting: %s", " ".join(argv))
    logf = open(log_path, "a") if log_path else None  # noqa: SIM115
    try:
        with subprocess.Popen(
            argv,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        ) as proc:
            try:
                run_id = _echo(proc, out or sys.stdout, logf, hide)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    finally:
        if logf:
            logf.close()
    if run_id is None:
        return None, "not-started"
    return run_id, run_status(run_id, env)


def run_status(run_id: int, env: Mapping[str, str]) -> str:
    """``finished:completed`` / ``finished:failed`` / ``running`` ... from ``flwr ls``."""
    res = _json_tail(flwr(["ls", "--run-id", str(run_id), "--format", "json"], env))
    runs = res.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def submit_job(
    state_dir: Path,
    env: Mapping[str, str],
    config_yaml: str,
    run_dir: Path,
    out: Any = None,
    *,
    federation_config: Mapping[str, Any] | None = None,
    serverapp: str = SERVERAPP,
    clientapp: str = CLIENTAPP,
    hide: re.Pattern[str] | None = None,
) -> ServerRun:
    """Write ``STATE_DIR/app`` and ``STATE_DIR/run-config.toml``, submit them to the SuperLink
    that ``env``'s ``FLWR_HOME`` names, stream the run (``STATE_DIR/logs/run.log`` keeps a
    copy), and return its status and ``RUN_DIR/metrics.jsonl``. ``serverapp`` / ``clientapp``
    are the app's components (``module:attribute``, importable where each runs)."""
    run_dir = run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    app_dir = write_app_dir(state_dir / "app", serverapp=serverapp, clientapp=clientapp)
    run_config = write_run_config(state_dir / "run-config.toml", config_yaml, str(run_dir))
    log_path = state_dir / "logs" / "run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    run_id, status = submit(
        app_dir,
        run_config,
        env,
        out=out,
        log_path=log_path,
        federation_config=federation_config,
        hide=hide,
    )
    log.info("run %s: %s after %.0f s", run_id, status, time.monotonic() - t0)
    return ServerRun(run_dir, run_id, status, read_metrics(run_dir / "metrics.jsonl"))


__all__ = [
    "ServerRun",
    "flwr",
    "register_site_keys",
    "run_status",
    "site_public_keys",
    "submit",
    "submit_job",
]
