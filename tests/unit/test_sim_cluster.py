"""`fedray simulate cluster.address=...` before anything starts: a dead address is exit 2 in
seconds, no node fitting a site names the key and what the nodes have, the embedded Ray's CPU
setting is not sent to a cluster, and --dry-run says where the simulation runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, load_config
from orchestrator.federated.sim_cluster import (
    simulation_ray_address,
    site_fit_problem,
    site_slots,
)
from orchestrator.processes.network import free_port


def job(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, None, list(overrides), "simulate-demo")


def test_embedded_by_default_the_cluster_when_given() -> None:
    from orchestrator.federated.simulate import federation_config

    local = job()
    assert simulation_ray_address(local) == "local"
    assert federation_config(local)["init-args-num-cpus"] == 2  # the preset's federation.num_cpus
    remote = job("cluster.address=10.0.0.5:6379")
    assert simulation_ray_address(remote) == "10.0.0.5:6379"
    assert "init-args-num-cpus" not in federation_config(remote)  # Ray refuses it on a cluster


def test_auto_inside_a_ray_job_joins_the_address_the_job_was_given() -> None:
    """A Ray Job's driver (fedray submit) has the cluster's GCS address in RAY_ADDRESS: the
    simulation joins that one, not whatever ``auto`` would guess from ray_current_cluster."""
    auto = job("cluster.address=auto")
    assert simulation_ray_address(auto, {"RAY_ADDRESS": "10.0.0.5:6379"}) == "10.0.0.5:6379"
    assert simulation_ray_address(auto, {"RAY_ADDRESS": "auto"}) == "auto"
    assert simulation_ray_address(auto, {}) == "auto"
    given = job("cluster.address=10.0.0.7:6379")  # an explicit address stays as given
    assert simulation_ray_address(given, {"RAY_ADDRESS": "10.0.0.5:6379"}) == "10.0.0.7:6379"
    assert simulation_ray_address(job(), {"RAY_ADDRESS": "10.0.0.5:6379"}) == "local"


def test_cluster_num_cpus_is_refused_by_simulate() -> None:
    from orchestrator.federated.simulate import federation_config

    with pytest.raises(ConfigError, match=r"federation\.num_cpus") as e:
        federation_config(job("cluster.num_cpus=4"))
    assert e.value.key == "cluster.num_cpus"


def test_a_site_must_fit_on_one_node() -> None:
    gpu_sites = job("federation.gpus_per_site=0.5")
    problem = site_fit_problem(gpu_sites, [(8.0, 0.0), (4.0, 0.0)], "the Ray cluster at X")
    assert problem is not None
    assert "federation.gpus_per_site=0.5" in problem and "8 CPU/0 GPU, 4 CPU/0 GPU" in problem
    assert site_fit_problem(gpu_sites, [(8.0, 0.0), (2.0, 1.0)], "X") is None
    big = job("federation.cpus_per_site=4")
    assert site_fit_problem(big, [(2.0, 0.0), (2.0, 0.0)], "X") is not None  # no spanning


def test_sites_at_once_counts_whole_sites_per_node() -> None:
    assert site_slots(job("federation.cpus_per_site=2"), [(5.0, 0.0), (1.0, 0.0), (4.0, 0)]) == 4
    gpu = job("federation.gpus_per_site=0.5")
    assert site_slots(gpu, [(8.0, 1.0), (8.0, 0.0)]) == 2  # GPUs bound it


def _fedray(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def test_a_dead_cluster_is_exit_2_in_seconds_and_leaves_no_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    done = _fedray(f"cluster.address=127.0.0.1:{free_port()}", f"run.dir={run_dir}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - t0 < 20  # Ray alone would retry for minutes
    assert "no Ray cluster answers" in done.stderr and "cluster.address" in done.stderr
    assert not run_dir.exists()


def test_dry_run_says_the_cluster_runs_it() -> None:
    from orchestrator.federated.simulate import simulation_plan

    flower = simulation_plan(job("cluster.address=10.0.0.5:6379"))["flower"]
    assert "the Ray cluster at 10.0.0.5:6379" in flower["engine"]
    assert flower["env"]["RAY_ADDRESS"] == "10.0.0.5:6379"
    assert "init-args-num-cpus" not in flower["submit"]
    assert "an embedded Ray" in simulation_plan(job())["flower"]["engine"]
