"""Real federated sites on Flower's deployment engine: ``fedray server`` and ``fedray site``.

    # coordinating machine (TLS + site authentication by default)
    fedray certs certs/ --host fl.example.org
    fedray server my.yaml --certs certs/ --site-keys keys/ --host 0.0.0.0 --port 9092
    # each site
    fedray site --server fl.example.org:9092 --data /data/site.csv --key site.key --root-cert ca.pem

What runs where:

- The server starts a Flower SuperLink (``flower-superlink``; Fleet, Control and Runtime APIs on
  one HTTPS port), registers the sites' public keys through the Control API
  (``flwr supernode register``), writes a minimal Flower app directory whose components are the
  installed fedray modules (``orchestrator.federated.server_app:app``,
  ``clients.client_app:app``), and submits it with ``flwr run --stream``. The SuperLink starts the
  ServerApp, which runs exactly the rounds of ``fedray simulate`` (same config file, same run
  directory: metrics.jsonl, checkpoints, HF export). The job's config travels inside the run
  config (``config-yaml``), so the SuperLink may be on another machine (``--superlink``).
- A site starts a Flower SuperNode (``flower-supernode``) with node config ``data-path=...``; for
  each message the SuperNode starts the ClientApp, which reads only that file.

Every process started here is stopped by PID on success, failure or Ctrl-C
(:mod:`orchestrator.federated.processes`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.federated.processes import (
    ManagedProcess,
    ProcessFailed,
    flower_env,
    port_open,
    stop_all,
    wait_until,
)
from orchestrator.runs import read_metrics

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ServerTLS:
    """The SuperLink's TLS files (``fedray certs`` writes them with these names)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_dir(cls, directory: str | Path) -> ServerTLS:
        d = Path(directory).expanduser().absolute()
        tls = cls(d / "ca.pem", d / "server.pem", d / "server.key")
        missing = [
            p.name for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{d} lacks {', '.join(missing)}; create test certificates with "
                f"`fedray certs {d}` or put your CA's ca.pem, server.pem and server.key there"
            )
        return tls


def _toml_string(value: str) -> str:
    if "'" not in value and "\n" not in value:
        return f"'{value}'"  # TOML literal string: no escapes needed (Windows paths, spaces)
    if '"' in value or "\n" in value:
        raise ValueError(f"node config value {value!r} cannot hold both ' and \" or newlines")
    return '"' + value.replace("\\", "\\\\") + '"'


def format_node_config(config: Mapping[str, Any]) -> str:
    """``{"data-path": "/d/a.csv", "num-threads": 1}`` -> ``data-path='/d/a.csv' num-threads=1``
    (the TOML-ish string ``flower-supernode --node-config`` parses; strings must be quoted)."""
    parts = []
    for k, v in config.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", k):
            raise ValueError(f"node config key {k!r}: use letters, digits, '-' and '_'")
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={_toml_string(str(v))}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Commands (pure: tests check them; deployment files show the same flags)


def superlink_argv(
    host: str,
    port: int,
    tls: ServerTLS | None,
    site_auth: bool,
    database: Path | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS (or ``--insecure`` when ``tls`` is None)."""
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
    max_retries: int | None = None,
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
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    return argv


# --------------------------------------------------------------------------------------------
# Flower CLI files: FLWR_HOME/config.toml and the app directory


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
        lines.append(f"root-certificates = {_toml_string(str(root_cert))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


APP_PYPROJECT = f"""\
# Written by fedray: a Flower app whose components are the installed fedray modules.
# Submitted with `flwr run`; runtime dependency installation is disabled (see STACK.md).
[project]
name = "fedray-federated"
version = "0.1.0"
description = "fedray federated fine-tuning (ServerApp + ClientApp from the installed package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedray"

[tool.flwr.app.components]
serverapp = "{SERVERAPP}"
clientapp = "{CLIENTAPP}"

[tool.flwr.app.config]
config = ""
config-yaml = ""
overrides = ""
run-dir = ""
"""


def write_app_dir(path: Path) -> Path:
    """The app directory ``flwr run`` builds a FAB from (works with fedray installed anywhere)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(APP_PYPROJECT)
    return path


def write_run_config(path: Path, config_yaml: str, run_dir: str) -> Path:
    """The ``--run-config`` TOML file: the resolved job YAML and the run directory."""
    import tomli_w

    path.write_text(tomli_w.dumps({"config-yaml": config_yaml, "run-dir": run_dir}))
    return path


# --------------------------------------------------------------------------------------------
# The Flower CLI (flwr) against our SuperLink


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


def register_site_keys(
    public_keys: Sequence[Path], env: Mapping[str, str]
) -> dict[str, int | None]:
    """Register each site's public key with the SuperLink (``flwr supernode register``).

    Returns ``{key file name: node id}``; a key registered earlier (a SuperLink with a
    persistent ``--database``) maps to None.
    """
    from orchestrator.federated.credentials import load_site_public_key

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


# --------------------------------------------------------------------------------------------
# Server side


@dataclass
class ServerOptions:
    """How ``fedray server`` reaches (or starts) the SuperLink."""

    host: str = "127.0.0.1"
    """Address the SuperLink binds (``0.0.0.0`` to accept sites from other machines)."""
    port: int = DEFAULT_PORT
    """The SuperLink's one HTTPS port (Fleet, Control and Runtime APIs)."""
    insecure: bool = False
    """Plain-text transport (logs a warning). Site authentication is then impossible."""
    certs: Path | None = None
    """Directory with ca.pem, server.pem, server.key; None = create test certificates in
    ``RUN_DIR/tls`` (sites need its ca.pem)."""
    site_keys: list[Path] = field(default_factory=list)
    """Sites' public keys to register (files or directories of ``*.pub``)."""
    site_auth: bool = True
    """Only registered sites may join (needs TLS)."""
    superlink: str | None = None
    """``HOST:PORT`` of an already running SuperLink: submit there, start nothing."""
    root_cert: Path | None = None
    """CA certificate to verify an existing SuperLink (``--superlink``) with."""
    startup_timeout_s: float = 60.0
    """Seconds to wait for a started SuperLink to accept connections."""


@dataclass
class ServerRun:
    """What a finished ``serve()`` returns."""

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


class SuperLinkProcess:
    """A SuperLink we started, plus the Flower CLI environment that talks to it."""

    def __init__(self, opts: ServerOptions, state_dir: Path, tls: ServerTLS | None) -> None:
        self.opts = opts
        self.state_dir = state_dir
        self.tls = tls
        self.flwr_home = state_dir / "flwr-home"
        self.env = flower_env(self.flwr_home)
        connect_host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host
        self.address = format_address(connect_host, opts.port)
        self.proc = ManagedProcess(
            "superlink",
            superlink_argv(
                opts.host,
                opts.port,
                tls,
                opts.site_auth and tls is not None,
                database=state_dir / "superlink.db",
            ),
            state_dir / "logs" / "superlink.log",
            env=self.env,
            cwd=state_dir,
        )

    def start(self) -> SuperLinkProcess:
        host, port = parse_address(self.address)
        if port_open(host, port):
            raise ProcessFailed(
                f"port {port} on {host} is already in use (another SuperLink?). Pick another "
                "with --port, or submit to the running one with --superlink HOST:PORT"
            )
        write_flwr_config(
            self.flwr_home,
            self.address,
            self.tls.ca_cert if self.tls else None,
            self.tls is None,
        )
        self.proc.start()
        wait_until(
            lambda: port_open(host, port),
            self.opts.startup_timeout_s,
            f"the SuperLink on {self.address}",
            watch=[self.proc],
        )
        return self

    def stop(self) -> None:
        stop_all([self.proc])


def _resolve_tls(opts: ServerOptions, tls_dir: Path) -> ServerTLS | None:
    from orchestrator.federated.credentials import make_test_pki

    if opts.insecure:
        log.warning(
            "--insecure: the SuperLink serves plain HTTP; model updates and the Control API are "
            "unencrypted and site authentication is off. Use only on a trusted network."
        )
        return None
    if opts.certs is not None:
        return ServerTLS.from_dir(opts.certs)
    if not (tls_dir / "server.pem").exists():
        make_test_pki(tls_dir, hosts=[] if opts.host in ("0.0.0.0", "::") else [opts.host])
        log.warning(
            "no --certs: created a test CA and server certificate in %s (valid for localhost and "
            "127.0.0.1). Sites verify the server with --root-cert %s",
            tls_dir,
            tls_dir / "ca.pem",
        )
    return ServerTLS.from_dir(tls_dir)


def submit(
    app_dir: Path,
    run_config: Path,
    env: Mapping[str, str],
    out: Any = None,
    log_path: Path | None = None,
) -> tuple[int | None, str]:
    """``flwr run APP fedray --run-config FILE --stream``: echo its lines, return (run id,
    final status from ``flwr ls``)."""
    argv = ["flwr", "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--stream"]
    log.info("submitting: %s", " ".join(argv))
    out = out or sys.stdout
    run_id: int | None = None
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
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    if logf:
                        logf.write(line)
                        logf.flush()
                    m = re.search(r"started run (\d+)", line)
                    if m and run_id is None:
                        run_id = int(m.group(1))
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


class ServerSession:
    """The server side of a deployment, in phases (``serve()`` runs them all):
    ``open()`` starts or reaches the SuperLink, ``register()`` adds site keys, ``run()`` submits
    a job and waits, ``close()`` stops what ``open()`` started. A context manager."""

    def __init__(self, opts: ServerOptions, state_dir: Path, tls_dir: Path) -> None:
        self.opts = opts
        self.state_dir = state_dir.absolute()
        self.tls_dir = tls_dir.absolute()
        self.superlink: SuperLinkProcess | None = None
        self.env: dict[str, str] = {}

    def open(self, out: Any = None) -> ServerSession:
        opts = self.opts
        self.state_dir.mkdir(parents=True, exist_ok=True)
        flwr_home = self.state_dir / "flwr-home"
        if opts.superlink:
            if opts.insecure:
                log.warning("--insecure: talking to %s over plain HTTP", opts.superlink)
            host, port = parse_address(opts.superlink)
            write_flwr_config(flwr_home, format_address(host, port), opts.root_cert, opts.insecure)
            self.env = flower_env(flwr_home)
            return self
        tls = _resolve_tls(opts, self.tls_dir)
        if tls is not None and not opts.site_auth:
            log.warning(
                "--no-site-auth: any SuperNode that can reach this SuperLink may join "
                "and receive the model"
            )
        self.superlink = SuperLinkProcess(opts, self.state_dir, tls)
        try:
            self.superlink.start()
        except BaseException:
            self.close()
            raise
        self.env = self.superlink.env
        print(
            f"SuperLink: {self.superlink.address} (log: {self.superlink.proc.log_path})", file=out
        )
        return self

    @property
    def address(self) -> str:
        if self.superlink is not None:
            return self.superlink.address
        assert self.opts.superlink is not None
        return self.opts.superlink

    def register(self, keys: Sequence[str | Path], out: Any = None) -> dict[str, int | None]:
        if not keys:
            if (
                self.superlink is not None
                and self.superlink.tls is not None
                and self.opts.site_auth
            ):
                log.warning(
                    "site authentication is on but no --site-keys were given: no site can join "
                    "until its key is registered (FLWR_HOME=%s flwr supernode register KEY.pub)",
                    self.env["FLWR_HOME"],
                )
            return {}
        if self.opts.insecure:
            raise ValueError("--site-keys needs TLS (Flower refuses site auth over --insecure)")
        ids = register_site_keys(site_public_keys(keys), self.env)
        print(f"registered sites: {', '.join(ids)}", file=out)
        return ids

    def run(self, config_yaml: str, run_dir: Path, out: Any = None) -> ServerRun:
        run_dir = run_dir.absolute()
        run_dir.mkdir(parents=True, exist_ok=True)
        app_dir = write_app_dir(self.state_dir / "app")
        run_config = write_run_config(self.state_dir / "run-config.toml", config_yaml, str(run_dir))
        t0 = time.monotonic()
        run_id, status = submit(
            app_dir, run_config, self.env, out=out, log_path=self.state_dir / "logs" / "run.log"
        )
        log.info("run %s: %s after %.0f s", run_id, status, time.monotonic() - t0)
        metrics_path = run_dir / "metrics.jsonl"
        metrics = read_metrics(metrics_path)
        return ServerRun(run_dir, run_id, status, metrics)

    def close(self) -> None:
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> ServerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    job: Any,
    opts: ServerOptions,
    run_dir: Path,
    resume: bool = False,
    out: Any = None,
) -> ServerRun:
    """Start (or reach) the SuperLink, register site keys, submit the run, wait, stop.

    ``job`` is a validated ``FederatedJob``. With ``resume``, ``run_dir`` must hold a run's
    ``config.yaml`` and checkpoints; the ServerApp continues from the last complete round.
    SuperLink state (registered keys) lives in ``RUN_DIR/server/superlink.db``, so a resumed
    server knows its sites.
    """
    from orchestrator.config.loader import to_yaml

    run_dir = run_dir.absolute()
    config_yaml = (run_dir / "config.yaml").read_text() if resume else to_yaml(job)
    with ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open(out=out)
        session.register(opts.site_keys, out=out)
        return session.run(config_yaml, run_dir, out=out)


# --------------------------------------------------------------------------------------------
# Site side


@dataclass
class SiteOptions:
    """``fedray site``: one SuperNode that trains on one local file."""

    server: str
    """The SuperLink's ``HOST:PORT``."""
    data: Path
    """The site's labelled file (csv/jsonl/json/parquet) or .txt; never leaves the site."""
    name: str | None = None
    """Name shown in the server's round table (default: the data file's stem)."""
    key: Path | None = None
    """The site's private key (``fedray site-key``); its ``.pub`` must be registered."""
    root_cert: Path | None = None
    """CA certificate that signed the server's certificate (None = the system CAs)."""
    insecure: bool = False
    """Plain-text transport (logs a warning)."""
    port: int = 9094
    """Local port of the SuperNode's ClientApp API (127.0.0.1 only)."""
    num_threads: int | None = None
    """torch threads for local training (default: torch's choice)."""
    max_retries: int | None = None
    """Reconnection attempts before giving up (None = keep trying)."""
    state_dir: Path | None = None
    """Where the SuperNode's FLWR_HOME and log go (default: a temporary directory)."""

    def node_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"data-path": str(self.data)}
        if self.name:
            cfg["site-name"] = self.name
        if self.num_threads:
            cfg["num-threads"] = int(self.num_threads)
        return cfg

    def validate(self) -> None:
        parse_address(self.server)
        if not self.data.is_file():
            raise FileNotFoundError(f"--data {self.data} is not a file")
        if self.insecure and (self.key or self.root_cert):
            raise ValueError(
                "--insecure cannot be combined with --key or --root-cert (both need TLS)"
            )
        for p, flag in ((self.key, "--key"), (self.root_cert, "--root-cert")):
            if p is not None and not p.is_file():
                raise FileNotFoundError(f"{flag} {p} is not a file")

    def argv(self) -> list[str]:
        return supernode_argv(
            self.server,
            self.node_config(),
            root_cert=self.root_cert,
            insecure=self.insecure,
            key=self.key,
            port=self.port,
            max_retries=self.max_retries,
        )


def site_process(opts: SiteOptions, log_path: Path, state_dir: Path) -> ManagedProcess:
    """A (not yet started) SuperNode process for ``opts``."""
    opts.validate()
    if opts.insecure:
        log.warning("--insecure: this site talks to %s over plain HTTP", opts.server)
    return ManagedProcess(
        f"site {opts.name or opts.data.stem}",
        opts.argv(),
        log_path,
        env=flower_env(state_dir / "flwr-home"),
        cwd=state_dir,
    )


def refused_message(opts: SiteOptions) -> str:
    key = f"{opts.key}.pub" if opts.key else "(no --key given)"
    return (
        f"the server at {opts.server} refused this site (flower-supernode exit "
        f"{SUPERNODE_REFUSED}). With site authentication the server must register this site's "
        f"public key first: send {key} to the server operator, who runs "
        "`flwr supernode register KEY.pub` (or `fedray server ... --site-keys KEY.pub`)."
    )


def which_or_fail(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install fedray (pip install -e .)")
    return found


__all__ = [
    "APP_PYPROJECT",
    "ServerOptions",
    "ServerRun",
    "ServerSession",
    "ServerTLS",
    "SiteOptions",
    "SuperLinkProcess",
    "format_node_config",
    "parse_address",
    "register_site_keys",
    "serve",
    "site_process",
    "superlink_argv",
    "supernode_argv",
    "write_app_dir",
    "write_flwr_config",
]
