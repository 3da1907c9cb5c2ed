"""Ray connection: an embedded local Ray (started and shut down here) or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import ClusterConfig, ScalingConfig
from orchestrator.processes.network import free_port

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_cluster(
    cfg: ClusterConfig, runtime_env: dict | None = None, **init_kwargs: Any
) -> Iterator[None]:
    """Connect to ``cfg.address`` and leave that cluster running, or start (and stop) a local Ray.

    If Ray is already initialised in this process (tests, notebooks), it is used as is.
    ``init_kwargs`` go to ``ray.init`` (e.g. ``log_to_driver``).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}, **(runtime_env or {})}
    if cfg.address:
        check_reachable(cfg)  # a dead address fails in seconds, not after Ray's long retries
        try:
            ray.init(address=cfg.address, runtime_env=env, **{"log_to_driver": True, **init_kwargs})
        except ConnectionError as e:
            raise ConfigError(
                f"cluster.address={cfg.address!r}: could not join a Ray cluster there ({e}). "
                "Start one (`ray start --head`) or fix the address.",
                "cluster.address",
            ) from e
        log.info("joined Ray cluster at %s", cfg.address)
        try:
            yield
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    with local_ray(cfg.num_cpus, env, **init_kwargs):
        yield


DASHBOARD_READY_ENV = "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT"
DASHBOARD_READY_S = "180"


@contextlib.contextmanager
def local_ray(
    num_cpus: int | None, runtime_env: dict | None = None, **init_kwargs: Any
) -> Iterator[str]:
    """Start a new single-machine Ray, yield its dashboard URL, and shut it down.

    Two traps of running Ray next to other Ray instances on one machine are closed here:

    - ``address="local"`` forces a new instance: with ``None``, Ray would join the cluster that
      any earlier ``ray start`` recorded in /tmp/ray/ray_current_cluster, even a dead one.
    - Ray Train's placement-group cleaner polls the state API without an address, which Ray
      resolves from that same file: it would query a stale or *another* cluster, log a GCS
      timeout traceback, or decide our trainer is dead and remove its placement group.
      ``RAY_API_SERVER_ADDRESS`` (checked first by that lookup) points every process of this
      instance at its own dashboard; the dashboard gets a free port for that reason.
    """
    import ray

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = dict(runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), "RAY_API_SERVER_ADDRESS": api}
    # Raylet and workers inherit the driver's environment at start-up; the runtime env covers
    # processes started later. RAY_ADDRESS must not redirect us to another cluster.
    saved = {k: os.environ.pop(k, None) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    os.environ["RAY_API_SERVER_ADDRESS"] = api
    # The dashboard starts its modules as subprocesses and gives up on one that is not ready in
    # 30 s (Ray's default): on a busy laptop their imports alone can take longer, and then the
    # state API that Ray Train's cleaner polls is gone. A user's own value wins.
    os.environ.setdefault(DASHBOARD_READY_ENV, DASHBOARD_READY_S)
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,  # it also serves the state API the cleaner polls
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            runtime_env=env,
            **init_kwargs,
        )
        try:
            yield api
        finally:
            ray.shutdown()
    finally:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# Fail fast: an address where nothing listens, or a request the cluster can never satisfy.


def address_endpoint(
    address: str, environ: Mapping[str, str] | None = None
) -> tuple[str, int] | None:
    """The ``(host, port)`` that ``ray.init(address=...)`` will connect to, or ``None`` when it
    cannot be told without Ray (``auto`` and no address file: Ray then scans local processes).

    Ray lets a non-empty ``RAY_ADDRESS`` win over the argument, and resolves ``auto`` from the
    ``ray_current_cluster`` file that ``ray start`` writes under ``$RAY_TMPDIR`` (or ``$TMPDIR``,
    or /tmp) ``/ray``; the same lookup is done here so that the probe checks what Ray would use.
    """
    environ = os.environ if environ is None else environ
    address = environ.get("RAY_ADDRESS") or address
    if address == "auto":
        tmp = environ.get("RAY_TMPDIR") or environ.get("TMPDIR") or "/tmp"
        current = Path(tmp) / "ray" / "ray_current_cluster"
        if not current.is_file():
            return None
        address = current.read_text().strip()
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    if not parts.hostname or parts.port is None:
        raise ConfigError(
            f"cluster.address={address!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'.",
            "cluster.address",
        )
    return parts.hostname, parts.port


# HTTP/2 client preface + an empty SETTINGS frame. Ray's GCS and its client server speak gRPC
# (HTTP/2), and an HTTP/2 server's first frame is SETTINGS: that answer proves a gRPC server
# listens, while a bare TCP accept can come from a proxy or load balancer in front of nothing.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def grpc_answers(host: str, port: int, timeout_s: float) -> str | None:
    """``None`` when an HTTP/2 (gRPC) server answers at ``host:port`` within ``timeout_s``,
    otherwise what went wrong."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return "the connection was closed without an HTTP/2 (gRPC) answer"
                head += chunk
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as e:
        return f"{e.__class__.__name__}: {e}"
    if head[3] != _H2_SETTINGS:
        return "something answered, but not a gRPC server (is this the dashboard port?)"
    return None


def check_reachable(cfg: ClusterConfig) -> None:
    """Fail within ``cluster.connect_timeout_s`` when no Ray (gRPC) server answers at the
    cluster's address (Ray itself retries for minutes before giving up)."""
    assert cfg.address
    endpoint = address_endpoint(cfg.address)
    if endpoint is None:
        return
    host, port = endpoint
    problem = grpc_answers(host, port, cfg.connect_timeout_s)
    if problem is not None:
        shown = (
            cfg.address if f"{host}:{port}" in cfg.address else f"{cfg.address} -> {host}:{port}"
        )
        raise ConfigError(
            f"cluster.address={shown!r}: no Ray cluster answers at {host}:{port} ({problem}). "
            "Is the Ray head running (`ray status --address HOST:PORT`) and is its GCS port "
            "(default 6379) open from here? Leave cluster.address unset to start a local Ray.",
            "cluster.address",
        )


@dataclass(frozen=True)
class NodeCapacity:
    """What one alive Ray node offers (its total resources, not what is free right now)."""

    cpus: float
    gpus: float


def worker_slots(node: NodeCapacity, scaling: ScalingConfig) -> int:
    """How many training workers fit on one node: each needs ``cpus_per_worker`` CPUs and, with
    ``use_gpu``, one whole GPU on the same node."""
    slots = math.floor(node.cpus / scaling.cpus_per_worker + 1e-9)
    if scaling.use_gpu:
        slots = min(slots, math.floor(node.gpus + 1e-9))
    return slots


def capacity_problem(
    scaling: ScalingConfig, nodes: Sequence[NodeCapacity], where: str
) -> ConfigError | None:
    """Why a cluster made of ``nodes`` can never place ``scaling``'s workers, or ``None``."""
    total_gpus = sum(n.gpus for n in nodes)
    shape = ", ".join(f"{n.cpus:g} CPU/{n.gpus:g} GPU" for n in nodes) or "no nodes"
    has = f"{where} has {len(nodes)} node(s): {shape}"
    hint = " If this cluster adds nodes on demand, set cluster.autoscaling=true."
    w = scaling.num_workers
    if scaling.use_gpu and total_gpus < 1:
        return ConfigError(
            f"scaling.use_gpu=true asks for {w} GPU(s) (one per worker), but {has}. "
            "Set scaling.use_gpu=false to train on CPUs, or run on a cluster with GPUs." + hint,
            "scaling.use_gpu",
        )
    if sum(worker_slots(n, scaling) for n in nodes) >= w:
        return None
    need = f"scaling.num_workers={w} x scaling.cpus_per_worker={scaling.cpus_per_worker} CPU"
    if scaling.use_gpu:
        need += " + 1 GPU (on the same node)"
    # No node fits even one worker: the per-worker size is the thing to change.
    fits_one = any(worker_slots(n, scaling) >= 1 for n in nodes)
    key = "scaling.num_workers" if fits_one else "scaling.cpus_per_worker"
    return ConfigError(
        f"{need} asks for {w * scaling.cpus_per_worker} CPUs"
        + (f" and {w} GPUs" if scaling.use_gpu else "")
        + f", but {has} (a worker cannot span nodes). Lower scaling.num_workers or "
        "scaling.cpus_per_worker, or add nodes." + hint,
        key,
    )


def alive_nodes() -> list[NodeCapacity]:
    """The alive nodes of the Ray cluster this process is connected to (``ray.nodes()``)."""
    import ray

    return [
        NodeCapacity(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def check_capacity(scaling: ScalingConfig, cluster: ClusterConfig) -> None:
    """Raise a ConfigError (exit 2) when the connected cluster can never place the workers,
    unless it autoscales (``cluster.autoscaling``). Checked right after connecting: otherwise Ray
    Train waits forever for resources."""
    if cluster.autoscaling and cluster.address:
        return
    where = f"the Ray cluster at {cluster.address}" if cluster.address else "the local Ray"
    problem = capacity_problem(scaling, alive_nodes(), where)
    if problem is not None:
        raise problem


__all__ = [
    "NodeCapacity",
    "address_endpoint",
    "alive_nodes",
    "capacity_problem",
    "check_capacity",
    "check_reachable",
    "grpc_answers",
    "local_ray",
    "ray_cluster",
    "worker_slots",
]
