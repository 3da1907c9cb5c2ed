"""``fedray simulate [CONFIG] [key=value ...] [--centralized]``: a federated job with its sites
simulated on one machine (Flower's simulation engine on Ray), or with ``--centralized`` the same
job's centralized baseline (:mod:`orchestrator.baseline.centralized`).

    fedray simulate                                  # the default preset, simulate-demo
    fedray simulate federation.num_rounds=2 --centralized train.lr=1e-4

Flower, Ray and torch are imported only once the config is valid and the job really runs (or
``--dry-run`` renders its plan).
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "federated fine-tuning, sites simulated on Ray (Flower)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--centralized",
        action="store_true",
        help="the job's centralized baseline: every site's training rows at one site, the "
        "same examples per round, evaluated on each site's held-out rows (its own run)",
    )


def run(job: Any) -> object:
    if job.cluster.address:  # before torch and Flower load: a dead cluster fails in seconds
        from orchestrator.cluster import check_reachable

        check_reachable(job.cluster)
    from orchestrator.federated.simulate import simulate

    return simulate(job)


def plan(job: Any) -> dict:
    from orchestrator.commands.plan import privacy_plan, round_pipeline
    from orchestrator.federated.simulate import simulation_plan

    return {
        **simulation_plan(job),
        "round_pipeline": round_pipeline(job),
        "privacy": privacy_plan(job),
    }


def run_centralized(job: Any) -> object:
    from orchestrator.baseline.centralized import centralized

    return centralized(job)


def plan_centralized(job: Any) -> dict:
    from orchestrator.baseline.centralized import centralized_plan

    return centralized_plan(job)


def simulate_command(ns: argparse.Namespace) -> tuple[type, str, Any, Any]:
    """(schema, default preset, run, plan): the federation, or its centralized baseline."""
    from orchestrator.config.federated import FederatedJob

    if ns.centralized:
        return FederatedJob, "simulate-demo", run_centralized, plan_centralized
    return FederatedJob, "simulate-demo", run, plan


__all__ = ["HELP", "add_arguments", "plan", "run", "simulate_command"]
