"""The site side of real federated sites: the SuperNode behind ``fedray site``.

    fedray site --server fl.example.org:9092 --data /data/site.csv --key site.key --root-cert ca.pem

A site starts a Flower SuperNode (``flower-supernode``) with node config ``data-path=...``; for
each message the SuperNode starts the ClientApp (``clients/client_app.py``), which hands it to the
site's warm worker (``clients/site_worker.py``; imports paid once per site) and reads only
that file. Only weight updates leave the machine. The process is stopped by PID
(:mod:`orchestrator.processes.managed`).

The SuperNode also serves a local API to its ClientApp processes (``--port``, on 127.0.0.1
only). Without ``--port`` fedray picks a free port, so several sites can run on one machine; a
given ``--port`` that is taken is a usage error before anything starts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.processes.launch import (
    SUPERNODE_REFUSED,
    flower_env,
    parse_address,
    supernode_argv,
)
from orchestrator.processes.managed import ManagedProcess
from orchestrator.processes.network import check_port_free, free_port

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
"""Where a SuperNode serves its ClientApp API (never the network)."""
PORT_TAKEN = re.compile(r"address already in use|Runtime HTTP API failed to start", re.IGNORECASE)
"""What ``flower-supernode`` logs when its ``--port`` was taken between our check and its bind."""
SITE_WORKER_ENV = "FEDRAY_SITE_WORKER"
"""``clients.site_worker.ENV_FLAG``: ``1`` in a SuperNode's environment turns on the warm worker
(the server side does not import the site's code; tests/unit/test_site_worker.py checks both)."""


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
    port: int | None = None
    """Local port of the SuperNode's ClientApp API (127.0.0.1 only); None = a free one, picked
    when the process is built (:func:`site_process`)."""
    num_threads: int | None = None
    """torch threads for local training (default: torch's choice)."""
    state_dir: Path | None = None
    """Where the ClientApp keeps this site's state across rounds and restarts (node config
    ``state-dir``; clients/site_state.py). None = in memory only."""
    warm_worker: bool = True
    """Handle messages in one warm process per site (clients/site_worker.py) instead of paying
    torch's and transformers' imports in the fresh process Flower starts for each message."""

    def node_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"data-path": str(self.data)}
        if self.name:
            cfg["site-name"] = self.name
        if self.num_threads:
            cfg["num-threads"] = int(self.num_threads)
        if self.state_dir:
            cfg["state-dir"] = str(self.state_dir)
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
        if self.port is not None:
            if not 1 <= self.port <= 65535:
                raise ValueError(f"--port {self.port} is not in 1..65535")
            check_port_free(
                LOCAL_HOST,
                self.port,
                "--port",
                "another site or program listens there. Leave --port out to use a free port, "
                "or pick another.",
            )

    def argv(self) -> list[str]:
        """The ``flower-supernode`` command (a free port is picked here when ``port`` is None;
        :func:`site_process` fixes it first, so the process and its printed command agree)."""
        return supernode_argv(
            self.server,
            self.node_config(),
            root_cert=self.root_cert,
            insecure=self.insecure,
            key=self.key,
            port=self.port if self.port is not None else free_port(LOCAL_HOST),
            host=LOCAL_HOST,
        )


def site_process(opts: SiteOptions, log_path: Path, state_dir: Path) -> ManagedProcess:
    """A (not yet started) SuperNode process for ``opts``; ``state_dir`` holds its FLWR_HOME.
    Without ``opts.port`` the SuperNode gets a port that is free now."""
    opts.validate()
    if opts.port is None:
        opts = replace(opts, port=free_port(LOCAL_HOST))
    if opts.insecure:
        log.warning("--insecure: this site talks to %s over plain HTTP", opts.server)
    return ManagedProcess(
        f"site {opts.name or opts.data.stem}",
        opts.argv(),
        log_path,
        env=flower_env(
            state_dir / "flwr-home", {SITE_WORKER_ENV: "1" if opts.warm_worker else "0"}
        ),
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


__all__ = ["LOCAL_HOST", "PORT_TAKEN", "SiteOptions", "refused_message", "site_process"]
