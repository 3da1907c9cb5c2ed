"""``simulate(job)``: a whole federation on this machine, on Flower's simulation engine (Ray).

    fedray simulate                                     # demo: 4 sites, tweets by topic
    fedray simulate my.yaml model.path=runs/pre/export strategy.name=fedadam \\
        federation.num_sites=20 partition.kind=dirichlet partition.alpha=0.3 run.dir=runs/fed1

Flower's supported simulation path, run the way ``fedray server`` runs a deployment:

1. start ``flower-superlink --simulation --insecure`` on a free 127.0.0.1 port, with a private
   ``FLWR_HOME`` (``RUN_DIR/simulation/flwr-home``) and ``RAY_ADDRESS=local`` (its Ray never
   joins another cluster);
2. submit the job with ``flwr run APP fedray --run-config FILE --federation-config
   "num-supernodes=N client-resources-num-cpus=... init-args-num-cpus=..." --stream``
   (:func:`orchestrator.processes.flwr_cli.submit_job`: the app's components are
   ``orchestrator.federated.server_app:app`` and ``clients.client_app:app``, the run config
   carries the whole resolved job as ``config-yaml`` and ``run-dir``). The SuperLink starts
   ``flwr-simulation``, which runs the ServerApp and N simulated SuperNodes on an embedded Ray;
   ``--stream`` brings the ServerApp's round table to this terminal;
3. stop the SuperLink by PID (with everything it started) on success, failure or Ctrl-C, and
   read the rounds back from ``RUN_DIR/metrics.jsonl``.

Each simulated site's ClientApp (clients/client_app.py) gets node config
``partition-id``/``num-partitions`` and cuts its own slice of the labelled file. Above
:data:`~orchestrator.config.federation.POOL_AUTO_ABOVE` sites (or with
``federation.simulation_nodes``) the engine runs a smaller pool of SuperNodes and every message
names the site it is for (``sim-site`` record; orchestrator/contract/site_pool.py): Flower's
engine polls every SuperNode, so its cost would otherwise grow with the population.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.cluster import check_reachable
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import to_yaml
from orchestrator.federated.report import print_partition
from orchestrator.federated.server_app import FederatedResult
from orchestrator.federated.setup import check_inputs, server_data_path
from orchestrator.federated.sim_cluster import (
    check_cluster,
    federation_config,
    simulation_ray_address,
)
from orchestrator.processes.flwr_cli import ServerRun, submit_job
from orchestrator.processes.launch import (
    CLIENTAPP,
    format_node_config,
    submit_argv,
    superlink_argv,
)
from orchestrator.processes.network import free_port
from orchestrator.processes.server_session import ServerOptions, SuperLinkProcess
from orchestrator.progress import round_progress
from orchestrator.report import report_hint
from orchestrator.run_log import console_to_run_log
from orchestrator.runs import resolve_run_dir
from orchestrator.tracking import TENSORBOARD_DIR, check_available

log = logging.getLogger(__name__)

SIM_SERVERAPP = "orchestrator.federated.sim_serverapp:app"
"""The ServerApp component submitted to the simulation engine: ``server_app:app`` behind a
thread-safe import order (see :mod:`orchestrator.federated.sim_serverapp`)."""

SIMULATION_ENV = {"RAY_ADDRESS": "local"}
"""Environment of the simulation SuperLink and what it starts: ``flwr-simulation`` calls
``ray.init()`` without an address, which would otherwise join a cluster named by RAY_ADDRESS
(or one left running by ``ray start``)."""


FLOWER_CLI_HINTS = re.compile(
    r"default simulated SuperNodes changed|To change federation size|"
    r"flwr federation simulation-config"
)
"""Lines of ``flwr-simulation`` about sizing a federation with Flower's own CLI; fedray sizes it
from ``federation.num_sites``, so they are kept out of the terminal (``run.log`` has them).
``simulate`` leaves them to :mod:`orchestrator.run_log`'s filter, which lists them too."""


def site_pool_plan(job: FederatedJob) -> str:
    """``--dry-run``'s line on how the simulated sites map to SuperNodes."""
    fed = job.federation
    pool = fed.simulation_pool(job.privacy.secure_aggregation)
    how = "auto" if fed.simulation_nodes is None else f"simulation_nodes={fed.simulation_nodes}"
    if pool is None:
        return f"off ({how}): one SuperNode per site ({fed.num_sites})"
    return (
        f"on ({how}): {fed.num_sites} sites take turns on {pool} SuperNodes; each message "
        f"names its site; a full evaluation runs in waves of {pool}"
    )


SUMMARY_SITES = 20
"""Sites listed in the partition table; a larger population is checked but not listed."""


def partition_summary(job: FederatedJob) -> list[dict[str, object]]:
    """The per-site size/label table of the simulated partition (same code the sites run; the
    first :data:`SUMMARY_SITES` sites); bad data is a ConfigError (exit 2, nothing started)."""
    from orchestrator.contract.partition import summary
    from orchestrator.federated.setup import simulation_partition

    parts, labels = simulation_partition(job, SUMMARY_SITES)
    return summary(parts, labels)


def simulation_plan(job: FederatedJob) -> dict[str, Any]:
    """What ``--dry-run`` prints: the SuperLink and ``flwr run`` commands, the partition.
    Starts nothing."""
    fed = job.federation
    run_dir = resolve_run_dir(job.run, "simulate")
    state = run_dir / "simulation"
    superlink = superlink_argv("127.0.0.1", 0, None, False, simulation=True)
    superlink[superlink.index("--port") + 1] = "<free port>"
    return {
        "flower": {
            "engine": "simulation: flower-superlink --simulation on 127.0.0.1 + flwr run "
            "--stream (flwr-simulation runs the ServerApp and the simulated SuperNodes on "
            + (
                f"the Ray cluster at {job.cluster.address}; checked first: it answers, a node "
                "fits a site, every node sees the data file and the run directory)"
                if job.cluster.address
                else "an embedded Ray)"
            ),
            "num_supernodes": federation_config(job)["num-supernodes"],
            "site_pool": site_pool_plan(job),
            "federation_config": federation_config(job),
            "superlink": superlink,
            "submit": shlex.join(
                submit_argv(state / "app", state / "run-config.toml", federation_config(job))
            ),
            "env": {
                **SIMULATION_ENV,
                "RAY_ADDRESS": simulation_ray_address(job),
                "FLWR_HOME": str(state / "flwr-home"),
            },
            "serverapp": SIM_SERVERAPP,
            "clientapp": CLIENTAPP,
        },
        "strategy": {"name": job.strategy.name, "server_lr": job.strategy.eta},
        "rounds": fed.num_rounds,
        "sites_per_round": fed.sampled_sites,
        "min_sites": fed.min_sites,
        "partition": partition_summary(job),
        "run_dir": str(run_dir),
    }


def run_on_simulation_engine(
    config_yaml: str,
    run_dir: Path,
    fed_config: Mapping[str, Any],
    *,
    serverapp: str = SIM_SERVERAPP,
    extra_env: Mapping[str, str] | None = None,
    out: Any = None,
    hide: re.Pattern[str] | None = FLOWER_CLI_HINTS,
) -> ServerRun:
    """Start a simulation SuperLink (state in ``RUN_DIR/simulation``), submit the job, stream
    it, stop the SuperLink; returns the run's status and metrics."""
    run_dir = run_dir.absolute()
    state_dir = run_dir / "simulation"
    opts = ServerOptions(host="127.0.0.1", port=free_port(), insecure=True, site_auth=False)
    env = {**SIMULATION_ENV, **(extra_env or {})}
    superlink = SuperLinkProcess(opts, state_dir, None, simulation=True, extra_env=env)
    log.info("simulation SuperLink on %s (log: %s)", superlink.address, superlink.proc.log_path)
    try:
        superlink.start()
        return submit_job(
            state_dir,
            superlink.env,
            config_yaml,
            run_dir,
            out=out,
            federation_config=fed_config,
            serverapp=serverapp,
            hide=hide,
        )
    finally:
        superlink.stop()


def simulate(job: FederatedJob) -> FederatedResult:
    """Run the job's federation on Flower's simulation engine; returns the per-round records.

    The console shows the partition, the round table and fedray's lines; Flower's CLI and
    engine chatter, Ray's and DeepSpeed's start-up lines go to ``RUN_DIR/run.log`` only, unless
    ``logging.verbose`` (:mod:`orchestrator.run_log`)."""
    if job.cluster.address:  # a dead address fails in seconds, before anything loads
        check_reachable(job.cluster)
    run_dir = resolve_run_dir(job.run, "simulate")
    fed_config = federation_config(job)  # config errors before anything starts
    check_available(job.logging)
    print_partition(partition_summary(job), job.partition.kind, job.federation.num_sites)
    check_inputs(job)
    if job.cluster.address:
        on = check_cluster(job, run_dir.absolute(), server_data_path(job).absolute())
        where = simulation_ray_address(job)  # `auto` in a Ray Job: the address it was given
        print(
            f"simulation on the Ray cluster at {where}: {on['nodes']} node(s), "
            f"{on['sites_at_once']} site(s) at once"
        )
    log.info("federation config: %s", format_node_config(fed_config))
    with console_to_run_log(run_dir, job.logging.verbose):
        if job.logging.tensorboard:
            print(f"TensorBoard: tensorboard --logdir {run_dir / TENSORBOARD_DIR}")
        # Every streamed line reaches the filter (and run.log); it hides Flower's CLI hints too.
        with round_progress(run_dir, job.federation.num_rounds):
            run = run_on_simulation_engine(
                to_yaml(job),
                run_dir,
                fed_config,
                hide=None,
                extra_env={"RAY_ADDRESS": simulation_ray_address(job)},
            )
    if not run.ok:
        raise RuntimeError(
            f"the federated run did not finish ({run.status}; see the log above and "
            f"{run_dir / 'simulation' / 'logs'}); partial results in {run_dir}"
        )
    result = FederatedResult(run_dir, run.export_dir, run.metrics)
    print(f"run directory: {result.run_dir}\nexport: {result.export_dir}")
    print(
        "Its centralized baseline (same model, rows and examples per round, one site): add "
        "--centralized to this command, then: fedray report "
        f"{shlex.quote(str(result.run_dir))} <its run directory>"
    )
    print(report_hint(result.run_dir))
    return result


__all__ = [
    "SIMULATION_ENV",
    "SIM_SERVERAPP",
    "federation_config",
    "partition_summary",
    "run_on_simulation_engine",
    "simulate",
    "simulation_plan",
    "site_pool_plan",
]
