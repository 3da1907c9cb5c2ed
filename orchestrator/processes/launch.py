"""What fedray hands to Flower, built as plain data: addresses, process argv and environment,
node config, and the files the ``flwr`` CLI reads (``$FLWR_HOME/config.toml``, the app directory,
the run config).

Nothing here starts a process; tests parse these commands with Flower's own parsers, and the
deployment files under ``cluster-configs/`` show the same flags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONNECTION = "fedray"
"""Name of the SuperLink connection fedray writes into ``$FLWR_HOME/config.toml``."""
DEFAULT_PORT = 9092
SUPERNODE_REFUSED = 305
"""``flower-supernode`` exit code when the SuperLink refuses it (Flower ``ExitCode``
SUPERNODE_CONNECTION_ERROR; with site authentication: its key is not registered)."""

SERVERAPP = "orchestrator.federated.server_app:app"
CLIENTAPP = "clients.client_app:app"


# --------------------------------------------------------------------------------------------
# Addresses, TLS files, node config


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); a bare host gets ``default_port``."""
    m = re.fullmatch(
        r"\[(?P<h6>[0-9a-fA-F:]+)\](?::(?P<p6>\d+))?|(?P<h>[^:\s]+)(?::(?P<p>\d+))?", address
    )
    if not m:
        raise ValueError(
            f"address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9092 or fl.example.org:9092)"
        )
    host = m.group("h6") or m.group("h")
    port_s = m.group("p6") or m.group("p")
    port = int(port_s) if port_s else default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {address!r} is not in 1..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (``localhost``, 127.0.0.0/8,
    ``::1``); ``0.0.0.0``, ``::``, other addresses and names count as reachable from outside."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerTLS:
    """The SuperLink's TLS files (``fedray certs`` writes them with these names)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> ServerTLS:
        """The three files' paths in ``directory`` (not checked)."""
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")

    @classmethod
    def from_dir(cls, directory: str | Path) -> ServerTLS:
        d = Path(directory).expanduser().absolute()
        tls = cls.in_dir(d)
        missing = [
            p.name for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{d} lacks {', '.join(missing)}; create test certificates with "
                f"`fedray certs {d}` or put your CA's ca.pem, server.pem and server.key there"
            )
        return tls


def toml_string(value: str) -> str:
    """``value`` as a TOML string (literal when possible: Windows paths, spaces)."""
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    if '"' in value or "\n" in value:
        raise ValueError(f"node config value {value!r} cannot hold both ' and \" or newlines")
    return '"' + value.replace("\\", "\\\\") + '"'


def format_node_config(config: Mapping[str, Any]) -> str:
    """``{"data-path": "/d/a.csv", "num-threads": 1}`` -> ``data-path='/d/a.csv' num-threads=1``
    (the TOML-ish string ``flower-supernode --node-config`` and ``flwr run --federation-config``
    parse; strings must be quoted)."""
    parts = []
    for k, v in config.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", k):
            raise ValueError(f"node config key {k!r}: use letters, digits, '-' and '_'")
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={toml_string(str(v))}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Process commands


def fedray_root() -> Path:
    """The directory holding the ``orchestrator``, ``clients`` and ``strategies`` packages that
    this process imported (a source checkout, or site-packages)."""
    import orchestrator

    return Path(orchestrator.__file__).resolve().parent.parent


SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_S = "0.2"


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
    # Each SuperExec (the server's, and one per SuperNode) checks for a new task to launch - a
    # ServerApp, or a ClientApp for each message - at this interval: Flower's 1 s default adds
    # 0.5 s on average before every message's process starts. A user's own value wins.
    env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)
    if extra:
        env.update(extra)
    return env


def superlink_argv(
    host: str,
    port: int,
    tls: ServerTLS | None,
    site_auth: bool,
    database: Path | None = None,
    simulation: bool = False,
) -> list[str]:
    """``flower-superlink`` with TLS (or ``--insecure`` when ``tls`` is None).

    With ``simulation`` the SuperLink runs each submitted run on Flower's simulation engine
    (``flwr-simulation``: ServerApp + simulated SuperNodes on Ray) instead of serving sites.
    """
    argv = ["flower-superlink", "--host", host, "--port", str(port)]
    if tls is None:
        if site_auth:
            raise ValueError("site authentication needs TLS; drop --insecure or --no-site-auth")
        argv.append("--insecure")
    else:
        argv += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
        ]
        if site_auth:
            argv.append("--enable-supernode-auth")
    if simulation:
        argv.append("--simulation")
    if database is not None:
        argv += ["--database", str(database)]
    argv.append("--disable-runtime-dependency-installation")
    return argv


def supernode_argv(
    server: str,
    node_config: Mapping[str, Any],
    *,
    root_cert: Path | None,
    insecure: bool,
    key: Path | None,
    port: int,
    host: str = "127.0.0.1",
) -> list[str]:
    """``flower-supernode`` for one site. ``port`` is its local ClientApp API (loopback)."""
    argv = ["flower-supernode", "--superlink", server]
    if insecure:
        if key is not None:
            raise ValueError("a site key needs TLS; drop --insecure or --key")
        argv.append("--insecure")
    elif root_cert is not None:
        argv += ["--root-certificates", str(root_cert)]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    argv += ["--host", host, "--port", str(port), "--node-config", format_node_config(node_config)]
    return argv


def submit_argv(
    app_dir: Path, run_config: Path, federation_config: Mapping[str, Any] | None = None
) -> list[str]:
    """``flwr run APP fedray --run-config FILE [--federation-config ...] --stream``."""
    argv = ["flwr", "run", str(app_dir), CONNECTION, "--run-config", str(run_config)]
    if federation_config:
        argv += ["--federation-config", format_node_config(federation_config)]
    return [*argv, "--stream"]


# --------------------------------------------------------------------------------------------
# Flower CLI files: FLWR_HOME/config.toml, the app directory, the run config


def write_flwr_config(
    flwr_home: Path, address: str, root_cert: Path | None, insecure: bool
) -> Path:
    """A private ``$FLWR_HOME/config.toml`` whose default connection is this SuperLink."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
    lines.append(f'address = "{address}"')
    if insecure:
        lines.append("insecure = true")
    elif root_cert is not None:
        lines.append(f"root-certificates = {toml_string(str(root_cert))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def app_pyproject(serverapp: str = SERVERAPP, clientapp: str = CLIENTAPP) -> str:
    """The ``pyproject.toml`` of a Flower app whose components are installed modules."""
    return f"""\
# Written by fedray: a Flower app whose components are the installed fedray modules.
# Submitted with `flwr run`; runtime dependency installation is disabled (else flwr would
# `uv sync` the dependencies at run time, ignoring pins: GBs of CUDA torch).
[project]
name = "fedray-federated"
version = "0.1.0"
description = "fedray federated fine-tuning (ServerApp + ClientApp from the installed package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedray"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
config = ""
config-yaml = ""
overrides = ""
run-dir = ""
"""


APP_PYPROJECT = app_pyproject()


def write_app_dir(path: Path, serverapp: str = SERVERAPP, clientapp: str = CLIENTAPP) -> Path:
    """The app directory ``flwr run`` builds a FAB from (works with fedray installed anywhere)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(app_pyproject(serverapp, clientapp))
    return path


def write_run_config(path: Path, config_yaml: str, run_dir: str) -> Path:
    """The ``--run-config`` TOML file: the resolved job YAML and the run directory."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"config-yaml": config_yaml, "run-dir": run_dir}))
    return path


__all__ = [
    "APP_PYPROJECT",
    "CLIENTAPP",
    "CONNECTION",
    "DEFAULT_PORT",
    "SERVERAPP",
    "SUPERNODE_REFUSED",
    "ServerTLS",
    "app_pyproject",
    "fedray_root",
    "flower_env",
    "format_address",
    "format_node_config",
    "is_loopback",
    "parse_address",
    "submit_argv",
    "superlink_argv",
    "supernode_argv",
    "toml_string",
    "write_app_dir",
    "write_flwr_config",
    "write_run_config",
]
