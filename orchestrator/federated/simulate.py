"""``simulate(job)``: a whole federation on this machine, on Flower's simulation engine (Ray).

    fedray simulate                                     # demo: 4 sites, tweets by topic
    fedray simulate my.yaml model.path=runs/pre/export strategy.name=fedadam \\
        federation.num_sites=20 partition.kind=dirichlet partition.alpha=0.3 run.dir=runs/fed1

Each simulated site is a Flower SuperNode whose ClientApp (clients/client_app.py) gets node config
``partition-id``/``num-partitions`` and cuts its own slice of the labelled file; the ServerApp
runs in this process with the resolved job (``make_server_app``), since ``run_simulation`` gives
a ServerApp an empty ``context.run_config``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestrator.config.federated import FederatedJob
from orchestrator.federated.report import print_partition
from orchestrator.federated.server_app import (
    FederatedResult,
    ServerSetup,
    make_server_app,
    prepare,
    server_data_path,
)
from orchestrator.runs import resolve_run_dir

log = logging.getLogger(__name__)


def backend_config(job: FederatedJob) -> dict[str, Any]:
    """Flower's Ray backend settings: resources per simulated site and for the embedded Ray."""
    fed = job.federation
    init_args: dict[str, Any] = {
        # A fresh local Ray: never join a cluster left behind by an earlier `ray start`.
        "address": "local",
        "include_dashboard": False,
    }
    if fed.num_cpus is not None:
        init_args["num_cpus"] = fed.num_cpus
    return {
        "client_resources": {"num_cpus": fed.cpus_per_site, "num_gpus": fed.gpus_per_site},
        "init_args": init_args,
    }


def partition_summary(job: FederatedJob) -> list[dict[str, object]]:
    """The per-site size/label table of the simulated partition (same code the sites run)."""
    from clients.site_data import read_table
    from orchestrator.contract.partition import partition, summary

    p = job.partition
    texts, labels, column = read_table(
        str(server_data_path(job)), job.data.text_field, job.data.label_field, p.column
    )
    parts = partition(
        p.kind, labels or texts, column, job.federation.num_sites, p.alpha, job.federation.seed
    )
    return summary(parts, labels or ["-"] * len(texts))


def simulation_plan(job: FederatedJob) -> dict[str, Any]:
    """What ``--dry-run`` prints: Flower settings and the partition."""
    fed = job.federation
    return {
        "flower": {
            "engine": "simulation (flwr.simulation.run_simulation, Ray backend)",
            "num_supernodes": fed.num_sites,
            "backend_config": backend_config(job),
            "serverapp": "orchestrator.federated.server_app:make_server_app(job)",
            "clientapp": "clients.client_app:app",
        },
        "strategy": {"name": job.strategy.name, "server_lr": job.strategy.eta},
        "rounds": fed.num_rounds,
        "sites_per_round": fed.sampled_sites,
        "min_sites": fed.min_sites,
        "partition": partition_summary(job),
        "run_dir": str(resolve_run_dir(job.run, "simulate")),
    }


def simulate(job: FederatedJob, setup: ServerSetup | None = None) -> FederatedResult:
    """Run the job's federation on an embedded Ray; returns the per-round records."""
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Flower has its own console handler; propagating too would print every line twice.
    logging.getLogger("flwr").propagate = False
    run_dir = resolve_run_dir(job.run, "simulate")
    print_partition(partition_summary(job), job.partition.kind)
    setup = setup or prepare(job)
    box: list[FederatedResult] = []
    run_simulation(
        server_app=make_server_app(job, run_dir, setup=setup, on_result=box.append),
        client_app=client_app,
        num_supernodes=job.federation.num_sites,
        backend_config=backend_config(job),  # type: ignore[arg-type]
    )
    if not box:
        raise RuntimeError(
            f"the federated run did not finish (see the log above); partial results in {run_dir}"
        )
    result = box[0]
    print(f"run directory: {result.run_dir}\nexport: {result.export_dir}")
    return result
