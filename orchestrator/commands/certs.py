"""``fedray certs`` and ``fedray site-key``: create the TLS and site-key files of a federation.

    fedray certs certs/ --host fl.example.org
    fedray site-key keys/hospital-a

The files are written by :mod:`orchestrator.processes.credentials`. An existing file (without
``--force``) or a bad host is a ``config error:`` and exit code 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from orchestrator.commands.common import EXIT_OK, config_error, parse


def certs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray certs",
        description="Create a test CA and a SuperLink server certificate (ca.pem, ca.key, "
        "server.pem, server.key). Sites get ca.pem only.",
    )
    p.add_argument("out_dir", type=Path, help="directory to write the four files into")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP address sites use to reach the server (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def certs_main(argv: Sequence[str]) -> int:
    from orchestrator.processes.credentials import make_test_pki

    ns = parse(certs_parser(), argv)
    try:
        pki = make_test_pki(ns.out_dir, ns.host, ns.days, overwrite=ns.force)
    except (FileExistsError, ValueError) as e:
        return config_error(e)
    print(f"CA certificate (give to sites):  {pki.ca_cert}")
    print(f"CA private key (keep offline):   {pki.ca_key}")
    print(f"server certificate / key:        {pki.server_cert} / {pki.server_key}")
    return EXIT_OK


def site_key_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray site-key",
        description="Create a site's key pair: PATH (private, stays at the site) and PATH.pub "
        "(send to the server operator, who registers it).",
    )
    p.add_argument("path", type=Path, help="private key path, e.g. keys/hospital-a")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    return p


def site_key_main(argv: Sequence[str]) -> int:
    from orchestrator.processes.credentials import make_site_key

    ns = parse(site_key_parser(), argv)
    try:
        key = make_site_key(ns.path, overwrite=ns.force)
    except (FileExistsError, ValueError) as e:
        return config_error(e)
    print(f"private key (keep at the site, --key):  {key.private}")
    print(f"public key (register on the server):    {key.public}")
    return EXIT_OK


__all__ = ["certs_main", "certs_parser", "site_key_main", "site_key_parser"]
