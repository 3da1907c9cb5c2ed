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
from collections.abc import Callable

from orchestrator.doctor.certs import check_certs
from orchestrator.doctor.check import Check
from orchestrator.doctor.machine import check_disk, check_gpus, check_port
from orchestrator.doctor.packages import check_versions
from orchestrator.doctor.ray_cluster import check_ray


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


__all__ = [
    "Check",
    "check_certs",
    "check_disk",
    "check_gpus",
    "check_port",
    "check_ray",
    "check_versions",
    "run_checks",
]
