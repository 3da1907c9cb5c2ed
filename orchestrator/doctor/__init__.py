"""``fedray doctor``: is this machine ready to run fedray? One line per check, with a fix.

    fedray doctor                                   # versions, GPUs, disk, the server port
    fedray doctor --address 10.0.0.5:6379           # + the Ray cluster: reachable? resources?
    fedray doctor --certs certs/ --host fl.example.org --port 9092   # + TLS files for the server

Each line starts with ``OK``, ``WARN`` (works, but look at it) or ``FAIL`` (will not work), and a
problem ends with ``-> fix: ...``. Exit code 1 when any check FAILs, else 0. Nothing here starts
or joins Ray: the cluster is probed (TCP connect, the GCS's gRPC health check, the dashboard's
HTTP API), each with a short timeout, so an unreachable address fails in seconds, not hangs.

One module per subject: ``packages`` (versions vs pins), ``machine`` (GPUs, disk, the server
port), ``ray_cluster``, ``certs``; each check returns :class:`~orchestrator.doctor.check.Check`
lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.doctor.certs import check_certs
from orchestrator.doctor.check import Check
from orchestrator.doctor.machine import check_disk, check_gpus, check_port
from orchestrator.doctor.packages import check_versions
from orchestrator.doctor.ray_cluster import check_ray


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


def run_checks(
    ns: argparse.Namespace, emit: Callable[[Check], None] = lambda c: None
) -> list[Check]:
    """All checks for the parsed arguments; ``emit`` sees each as soon as it is done."""
    groups: list[Callable[[], list[Check]]] = [
        check_versions,
        check_gpus,
        lambda: check_disk(
            {"disk run.root": ns.run_root, "disk data.cache_dir": ns.cache_dir}, ns.min_free_gb
        ),
        lambda: check_ray(ns.address, ns.dashboard),
    ]
    if ns.certs is not None:
        groups.append(lambda: check_certs(ns.certs, ns.host))
    groups.append(lambda: [check_port(ns.port)])
    out = []
    for group in groups:
        for c in group():
            emit(c)
            out.append(c)
    return out


def main(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    t0 = time.monotonic()

    def emit(c: Check) -> None:
        print(c.line(), flush=True)

    checks = run_checks(ns, emit)
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    verdict = "not ready" if fails else "ready"
    print(
        f"doctor: {verdict}: {len(checks)} checks, {warns} WARN, {fails} FAIL "
        f"({time.monotonic() - t0:.1f} s)",
        file=sys.stderr if fails else sys.stdout,
    )
    return 1 if fails else 0


__all__ = [
    "Check",
    "check_certs",
    "check_disk",
    "check_gpus",
    "check_port",
    "check_ray",
    "check_versions",
    "main",
    "run_checks",
]
