"""Ray connection: an embedded local Ray (started and shut down here) or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from orchestrator.config.schema import ClusterConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_cluster(cfg: ClusterConfig, runtime_env: dict | None = None) -> Iterator[None]:
    """Connect to ``cfg.address`` and leave that cluster running, or start (and stop) a local Ray.

    If Ray is already initialised in this process (tests, notebooks), it is used as is.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}, **(runtime_env or {})}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=True)
        log.info("joined Ray cluster at %s", cfg.address)
        try:
            yield
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    with local_ray(cfg.num_cpus, env):
        yield


def free_local_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    port = free_local_port()
    api = f"http://127.0.0.1:{port}"
    env = dict(runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), "RAY_API_SERVER_ADDRESS": api}
    # Raylet and workers inherit the driver's environment at start-up; the runtime env covers
    # processes started later. RAY_ADDRESS must not redirect us to another cluster.
    saved = {k: os.environ.pop(k, None) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    os.environ["RAY_API_SERVER_ADDRESS"] = api
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
