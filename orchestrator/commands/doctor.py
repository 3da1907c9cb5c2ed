"""``fedray doctor``: is this machine ready to run fedray? The checks are
:mod:`orchestrator.doctor`; this prints one line per check and exits 1 when any FAILs, else 0.

    fedray doctor
    fedray doctor --address 10.0.0.5:6379 --certs certs/ --host fl.example.org --port 9092
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.commands.common import EXIT_FAILED, EXIT_OK, parse


def parser() -> argparse.ArgumentParser:
    from orchestrator.config.schema import DataConfig, RunConfig
    from orchestrator.processes.launch import DEFAULT_PORT

    p = argparse.ArgumentParser(
        prog="fedray doctor",
        description="Check versions, GPUs, disk, a Ray cluster, certificates and ports. "
        "Exit 1 when a check FAILs.",
    )
    p.add_argument("--address", help="Ray cluster to check: HOST:PORT, ray://HOST:PORT or auto")
    p.add_argument("--dashboard", help="its dashboard URL (default http://HOST:8265)")
    p.add_argument("--certs", type=Path, help="TLS directory of fedray server (ca.pem, server.pem)")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name sites dial the server by; must be in server.pem (repeatable)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="fedray server's port")
    p.add_argument(
        "--run-root", type=Path, default=Path(RunConfig.root), help="where runs go (run.root)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(DataConfig.cache_dir),
        help="data/tokenizer cache (data.cache_dir)",
    )
    p.add_argument("--min-free-gb", type=float, default=10.0, help="WARN below this free space")
    return p


def main(argv: Sequence[str]) -> int:
    from orchestrator.doctor import run_checks

    ns = parse(parser(), argv)
    t0 = time.monotonic()
    checks = run_checks(ns, lambda c: print(c.line(), flush=True))
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    verdict = "not ready" if fails else "ready"
    print(
        f"doctor: {verdict}: {len(checks)} checks, {warns} WARN, {fails} FAIL "
        f"({time.monotonic() - t0:.1f} s)",
        file=sys.stderr if fails else sys.stdout,
    )
    return EXIT_FAILED if fails else EXIT_OK


__all__ = ["main", "parser"]
