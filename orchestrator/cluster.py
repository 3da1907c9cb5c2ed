"""Ray connection: an embedded local Ray (started and shut down here) or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

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
    # Embedded: never pick up a RAY_ADDRESS from the environment by accident.
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls;
        # without it that actor logs a warning every few seconds.
        # address="local" forces a new instance: with None, Ray would join the cluster recorded in
        # /tmp/ray/ray_current_cluster by any earlier `ray start` on this machine (even a dead one).
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=env,
        )
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
