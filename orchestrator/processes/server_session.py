"""The server side of real federated sites: the SuperLink session behind ``fedray server``.

    # coordinating machine (TLS + site authentication by default); the SuperLink stays on
    # loopback, sites reach its Fleet API through cluster-configs/federated/nginx-fleet.conf
    fedray certs certs/ --host fl.example.org
    fedray server my.yaml --certs certs/ --site-keys keys/ --host 127.0.0.1 --port 9093

The server starts a Flower SuperLink (``flower-superlink``; Fleet, Control and Runtime APIs on
one HTTPS port), registers the sites' public keys through the Control API
(``flwr supernode register``), and submits the job with ``flwr run --stream``
(:func:`orchestrator.processes.flwr_cli.submit_job`). The SuperLink starts the ServerApp, which
runs exactly the rounds of ``fedray simulate`` (same config file, same run directory:
metrics.jsonl, checkpoints, HF export). The job's config travels inside the run config
(``config-yaml``), so the SuperLink may be on another machine (``--superlink``).

Every process started here is stopped by PID on success, failure or a signal
(:mod:`orchestrator.processes.managed`). Binding the SuperLink to anything but a loopback
address logs a warning: its Control API (register site keys, start runs) has no authentication
in open-source Flower, and it shares the one port with the Fleet API sites use.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.processes.flwr_cli import (
    ServerRun,
    register_site_keys,
    site_public_keys,
    submit_job,
)
from orchestrator.processes.launch import (
    CLIENTAPP,
    DEFAULT_PORT,
    SERVERAPP,
    ServerTLS,
    flower_env,
    format_address,
    is_loopback,
    parse_address,
    submit_argv,
    superlink_argv,
    supernode_argv,
    write_flwr_config,
)
from orchestrator.processes.managed import ManagedProcess, stop_all, wait_until
from orchestrator.processes.network import check_port_free, port_open

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    """How ``fedray server`` reaches (or starts) the SuperLink."""

    host: str = "127.0.0.1"
    """Address the SuperLink binds. Keep it on loopback and let sites in through the Fleet-only
    proxy (``cluster-configs/federated/nginx-fleet.conf``): anything else (``0.0.0.0``) also
    exposes the unauthenticated Control API, and logs a warning."""
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


class SuperLinkProcess:
    """A SuperLink we started, plus the Flower CLI environment that talks to it.

    ``simulation=True`` starts it in simulation mode (runs execute on Flower's simulation
    engine; no site can connect); ``extra_env`` reaches the SuperLink and every process it
    starts (the ServerApp, ``flwr-simulation`` and its Ray)."""

    def __init__(
        self,
        opts: ServerOptions,
        state_dir: Path,
        tls: ServerTLS | None,
        *,
        simulation: bool = False,
        database: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.opts = opts
        self.state_dir = state_dir
        self.tls = tls
        self.flwr_home = state_dir / "flwr-home"
        self.env = flower_env(self.flwr_home, extra_env)
        connect_host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host
        self.address = format_address(connect_host, opts.port)
        argv = superlink_argv(
            opts.host,
            opts.port,
            tls,
            opts.site_auth and tls is not None,
            database=database,
            simulation=simulation,
        )
        self.proc = ManagedProcess(
            "superlink", argv, state_dir / "logs" / "superlink.log", env=self.env, cwd=state_dir
        )

    def start(self) -> SuperLinkProcess:
        """Start it and wait until it accepts connections; a taken port is a
        :class:`~orchestrator.processes.network.PortInUse` (a ValueError) before anything
        starts."""
        host, port = parse_address(self.address)
        check_port_free(
            self.opts.host or "0.0.0.0",
            port,
            "--port",
            "another SuperLink or program listens there. Pick another with --port, or submit "
            "to the running SuperLink with --superlink HOST:PORT",
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
    from orchestrator.processes.credentials import make_test_pki

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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.opts.superlink:
            self._reach_existing()
            return self
        if not is_loopback(self.opts.host):
            log.warning(
                "--host %s is not a loopback address: the SuperLink serves Flower's Control API "
                "(register site keys, start runs; no authentication in open-source Flower) on "
                "the same port as the Fleet API sites use, so it is now reachable from the "
                "network. Bind --host 127.0.0.1 and let sites in through the Fleet-only proxy "
                "(cluster-configs/federated/nginx-fleet.conf; docs/sites.md, 'Deployment files "
                "and network exposure').",
                self.opts.host,
            )
        tls = _resolve_tls(self.opts, self.tls_dir)
        if tls is not None and not self.opts.site_auth:
            log.warning(
                "--no-site-auth: any SuperNode that can reach this SuperLink may join "
                "and receive the model"
            )
        self.superlink = SuperLinkProcess(
            self.opts, self.state_dir, tls, database=self.state_dir / "superlink.db"
        )
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

    def _reach_existing(self) -> None:
        opts = self.opts
        assert opts.superlink is not None
        if opts.insecure:
            log.warning("--insecure: talking to %s over plain HTTP", opts.superlink)
        host, port = parse_address(opts.superlink)
        flwr_home = self.state_dir / "flwr-home"
        write_flwr_config(flwr_home, format_address(host, port), opts.root_cert, opts.insecure)
        self.env = flower_env(flwr_home)

    @property
    def address(self) -> str:
        if self.superlink is not None:
            return self.superlink.address
        assert self.opts.superlink is not None
        return self.opts.superlink

    def register(self, keys: Sequence[str | Path], out: Any = None) -> dict[str, int | None]:
        if not keys:
            auth_on = self.superlink is not None and self.superlink.tls is not None
            if auth_on and self.opts.site_auth:
                log.warning(
                    "site authentication is on but no --site-keys were given: no site can join "
                    "until its key is registered (FLWR_HOME=%s flwr supernode register KEY.pub)",
                    self.env["FLWR_HOME"],
                )
            return {}
        if self.opts.insecure:
            raise ValueError("--site-keys needs TLS (Flower refuses site auth over --insecure)")
        files = site_public_keys(keys)
        # One `flwr supernode register` process per key (a Python CLI start: about a second
        # each), run side by side: N sites register in about the time of one.
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            parts = list(pool.map(lambda f: register_site_keys([f], self.env), files))
        ids = {name: node for part in parts for name, node in part.items()}
        print(f"registered sites: {', '.join(ids)}", file=out)
        return ids

    def run(
        self, config_yaml: str, run_dir: Path, out: Any = None, *, clientapp: str = CLIENTAPP
    ) -> ServerRun:
        """Submit the job (``clientapp``: the ClientApp component the sites run) and wait."""
        return submit_job(
            self.state_dir, self.env, config_yaml, run_dir, out=out, clientapp=clientapp
        )

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
    checkpoints and ``job`` is its ``config.yaml`` with any overrides merged (the CLI checks
    them with :func:`orchestrator.federated.resume.check_resumable`, and so does the ServerApp
    on restore); the ServerApp continues from the last complete round. SuperLink state
    (registered keys) lives in ``RUN_DIR/server/superlink.db``, so a resumed server knows its
    sites.
    """
    from orchestrator.config.loader import to_yaml

    run_dir = run_dir.absolute()
    if resume and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: not a fedray run directory")
    config_yaml = to_yaml(job)
    with ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open(out=out)
        session.register(opts.site_keys, out=out)
        return session.run(config_yaml, run_dir, out=out)


def server_plan(job: object, opts: ServerOptions, run_dir: Path) -> dict[str, object]:
    """What ``--dry-run`` prints: the SuperLink command, the app, a site command."""
    tls = None if opts.insecure else ServerTLS.in_dir(Path("<certs>"))
    if opts.certs is not None and not opts.insecure:
        tls = ServerTLS.in_dir(opts.certs.absolute())
    address = opts.superlink or format_address(opts.host, opts.port)
    state = run_dir / "server"
    site_example = supernode_argv(
        address,
        {"data-path": "/path/to/site.csv"},
        root_cert=None if opts.insecure else Path("ca.pem"),
        insecure=opts.insecure,
        key=None if not opts.site_auth or opts.insecure else Path("site.key"),
        port=0,
    )
    site_example[site_example.index("--port") + 1] = "<free port>"
    return {
        "run_dir": str(run_dir),
        "superlink": None
        if opts.superlink
        else superlink_argv(
            opts.host,
            opts.port,
            tls,
            opts.site_auth and tls is not None,
            database=state / "superlink.db",
        ),
        "register": [f"flwr supernode register {k}" for k in site_public_keys(opts.site_keys)],
        "submit": shlex.join(submit_argv(state / "app", state / "run-config.toml")),
        "app_components": {"serverapp": SERVERAPP, "clientapp": CLIENTAPP},
        "site_example": site_example,
    }


__all__ = [
    "ServerOptions",
    "ServerRun",
    "ServerSession",
    "SuperLinkProcess",
    "serve",
    "server_plan",
]
