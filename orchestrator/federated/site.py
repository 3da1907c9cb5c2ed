"""The site side of real federated sites: ``fedray site``.

    fedray site --server fl.example.org:9092 --data /data/site.csv --key site.key --root-cert ca.pem

A site starts a Flower SuperNode (``flower-supernode``) with node config ``data-path=...``; for
each message the SuperNode starts the ClientApp (``clients/client_app.py``), which reads only
that file. Only weight updates leave the machine. The process is stopped by PID
(:mod:`orchestrator.federated.processes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.federated.launch import SUPERNODE_REFUSED, parse_address, supernode_argv
from orchestrator.federated.processes import ManagedProcess, flower_env

log = logging.getLogger(__name__)


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
        )


def site_process(opts: SiteOptions, log_path: Path, state_dir: Path) -> ManagedProcess:
    """A (not yet started) SuperNode process for ``opts``; ``state_dir`` holds its FLWR_HOME."""
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


__all__ = ["SiteOptions", "refused_message", "site_process"]
