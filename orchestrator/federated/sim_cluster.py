"""``fedray simulate cluster.address=HOST:PORT``: Flower's simulation engine on an existing Ray
cluster, so a federation can use more than the machine it was typed on.

The simulation SuperLink runs here as always; its ``flwr-simulation`` joins the cluster
(``RAY_ADDRESS``) instead of starting an embedded Ray, and Flower places one ClientApp actor per
``federation.cpus_per_site`` / ``gpus_per_site`` on whichever nodes have them. Before anything
starts (exit 2 on a problem, naming the key):

1. the address answers within ``cluster.connect_timeout_s`` (:func:`orchestrator.cluster.check_reachable`);
2. some node can hold one site (its CPUs and GPUs), unless ``cluster.autoscaling``;
3. every node sees the files a site reads (the labelled data file, byte for byte the same size)
   and the run directory (sites on other nodes keep their state under ``RUN_DIR/site-state``): a
   probe task pinned to each node looks. Sites on other nodes import the same code: install
   fedray at the same path on every node (or share it), as for ``fedray pretrain`` (``fedray
   submit`` ships it with the job).

The engine's settings (:func:`federation_config`) are pure config and live here too, so that
``fedray submit`` checks a federated job before uploading it without loading Flower.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError

PROBE_TIMEOUT_S = 120.0
"""How long the per-node storage probes may take (a node's first task starts a worker)."""


def simulation_ray_address(job: FederatedJob, environ: Mapping[str, str] | None = None) -> str:
    """``RAY_ADDRESS`` for the simulation SuperLink and what it starts: the cluster's address,
    or ``local`` (never join a cluster named by the environment or left by ``ray start``).

    ``auto`` becomes this process's own ``RAY_ADDRESS`` when that names a cluster: Ray lets it
    win over ``auto`` in the checks made here, and a Ray Job's driver (``fedray submit``) gets
    its cluster's GCS address there. Passing ``auto`` on would make ``flwr-simulation`` guess
    from ``ray_current_cluster``, which names whichever cluster ``ray start`` made last."""
    environ = os.environ if environ is None else environ
    here = environ.get("RAY_ADDRESS", "")
    if job.cluster.address == "auto" and here not in ("", "auto"):
        return here
    return job.cluster.address or "local"


def federation_config(job: FederatedJob) -> dict[str, Any]:
    """``flwr run --federation-config`` settings (pure config: ``fedray submit`` checks them
    before uploading, without loading Flower): the number of simulated SuperNodes (one per
    site, or a pool the sites take turns on: ``federation.simulation_nodes``), the resources
    each one reserves, and the CPUs of the embedded Ray."""
    fed = job.federation
    if job.cluster.num_cpus is not None:
        raise ConfigError(
            f"cluster.num_cpus={job.cluster.num_cpus} is not used by fedray simulate: its "
            "embedded Ray takes federation.num_cpus, and on a cluster (cluster.address) the "
            "nodes' own CPUs count. Set federation.num_cpus instead.",
            "cluster.num_cpus",
        )
    if float(fed.cpus_per_site) != int(fed.cpus_per_site):
        raise ConfigError(
            f"federation.cpus_per_site={fed.cpus_per_site} is not allowed: Flower's simulation "
            "engine reserves whole CPUs per simulated site (client-resources-num-cpus is an "
            "integer). Use 1, 2, ...; to run more sites at once, raise federation.num_cpus.",
            "federation.cpus_per_site",
        )
    pool = fed.simulation_pool(job.privacy.secure_aggregation)
    cfg: dict[str, Any] = {
        "num-supernodes": pool or fed.num_sites,
        "client-resources-num-cpus": int(fed.cpus_per_site),
        "client-resources-num-gpus": float(fed.gpus_per_site),
    }
    if fed.num_cpus is not None and not job.cluster.address:  # a cluster brings its own CPUs
        cfg["init-args-num-cpus"] = fed.num_cpus
    return cfg


def site_fit_problem(job: FederatedJob, nodes: list[tuple[float, float]], where: str) -> str | None:
    """Why no node (``(cpus, gpus)`` each) can hold one simulated site, or None."""
    cpus, gpus = float(job.federation.cpus_per_site), float(job.federation.gpus_per_site)
    if any(c + 1e-9 >= cpus and g + 1e-9 >= gpus for c, g in nodes):
        return None
    shape = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in nodes) or "no alive nodes"
    return (
        f"federation.cpus_per_site={cpus:g} and federation.gpus_per_site={gpus:g} ask for one "
        f"node with {cpus:g} CPU and {gpus:g} GPU per site, but {where} has {shape} (a site "
        "cannot span nodes). Lower them, add nodes, or set cluster.autoscaling=true if the "
        "cluster adds nodes on demand."
    )


def site_slots(job: FederatedJob, nodes: list[tuple[float, float]]) -> int:
    """How many sites the cluster runs at once (what Flower's actor pool will hold)."""
    cpus, gpus = float(job.federation.cpus_per_site), float(job.federation.gpus_per_site)
    total = 0
    for c, g in nodes:
        fit = math.floor(c / cpus + 1e-9) if cpus else 0
        if gpus:
            fit = min(fit, math.floor(g / gpus + 1e-9))
        total += fit
    return total


def check_cluster(job: FederatedJob, run_dir: Path, data_file: Path) -> dict[str, Any]:
    """Checks 2 and 3 above (ConfigError on a problem; ``simulate`` made check 1 before
    anything loaded); returns what the run's header reports: the nodes and how many sites run
    at once."""
    import ray

    ray.init(address=job.cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        nodes = [
            (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in alive
        ]
        where = f"the Ray cluster at {job.cluster.address}"
        if not job.cluster.autoscaling and (problem := site_fit_problem(job, nodes, where)):
            raise ConfigError(problem, "federation.cpus_per_site")
        missing = _storage_problems([n["NodeID"] for n in alive], run_dir, data_file)
    finally:
        ray.shutdown()
    if missing:
        raise ConfigError(
            "every node of the cluster must see the files a simulated site uses, at the same "
            "path: " + "; ".join(missing) + ". Put data.paths and run.dir (or run.root) on "
            "storage all nodes mount at the same path.",
            "run.dir" if all("run directory" in m for m in missing) else "data.paths",
        )
    return {"nodes": len(nodes), "sites_at_once": site_slots(job, nodes)}


def _storage_problems(node_ids: list[str], run_dir: Path, data_file: Path) -> list[str]:
    """Ask a task pinned to each node whether it sees ``data_file`` (same size) and a marker
    written into ``run_dir`` from here; what each node misses."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / f".cluster-probe-{uuid.uuid4().hex[:8]}"
    marker.write_text("fedray")
    size = data_file.stat().st_size

    @ray.remote(num_cpus=0)
    def look(data: str, mark: str) -> tuple[int | None, bool]:
        p = Path(data)
        return (p.stat().st_size if p.is_file() else None), Path(mark).is_file()

    try:
        refs = {
            node: look.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(str(data_file), str(marker))
            for node in node_ids
        }
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S), strict=True))
    finally:
        marker.unlink(missing_ok=True)
    problems = []
    for node, (data_size, mark) in seen.items():
        if data_size != size:
            what = "does not exist" if data_size is None else f"has {data_size} bytes, not {size}"
            problems.append(f"node {node[:12]}: the data file {data_file} {what} there")
        if not mark:
            problems.append(f"node {node[:12]}: the run directory {run_dir} is not shared")
    return problems


__all__ = [
    "check_cluster",
    "federation_config",
    "simulation_ray_address",
    "site_fit_problem",
    "site_slots",
]
