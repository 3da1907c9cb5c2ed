"""The embedded Ray never confuses itself with another Ray instance on the same machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.processes.network import free_port

pytestmark = pytest.mark.integration


def test_state_api_inside_embedded_ray_ignores_a_stale_cluster_file(
    ray_local: str, tmp_path: Path
) -> None:
    """Ray Train's placement-group cleaner asks the state API whether the trainer is alive,
    without an address. Ray resolves that from ``ray_current_cluster``, which a dead or a
    different ``ray start`` cluster may have written. Here an actor does the same lookup with
    such a stale file in place: it must still reach its own cluster and find itself alive."""
    import ray

    stale = tmp_path / "ray"
    stale.mkdir()
    (stale / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing listens

    @ray.remote(num_cpus=0)
    class Probe:
        def look(self, tmpdir: str) -> tuple[str | None, str | None]:
            from ray.util.state import get_actor

            os.environ["RAY_TMPDIR"] = tmpdir  # where Ray looks for ray_current_cluster
            me = ray.get_runtime_context().get_actor_id()
            state = get_actor(me, timeout=20)  # what the cleaner calls
            return os.environ.get("RAY_API_SERVER_ADDRESS"), state.state if state else None

    probe = Probe.remote()
    try:
        api, state = ray.get(probe.look.remote(str(tmp_path)), timeout=60)
    finally:
        ray.kill(probe)
    assert api == ray_local
    assert state == "ALIVE"


def test_requests_the_cluster_cannot_meet_fail_fast(
    ray_local: str, tmp_path: Path, cache_dir: Path
) -> None:
    """GPUs on a cluster without any, or more workers than the CPUs: exit-2 errors in seconds
    (Ray Train would wait for those resources forever)."""
    import time

    from orchestrator.config import PretrainJob, load_config
    from orchestrator.config.loader import ConfigError
    from orchestrator.pretrain import pretrain

    def job(*overrides: str) -> PretrainJob:
        return load_config(
            PretrainJob,
            None,
            [f"run.root={tmp_path}", f"data.cache_dir={cache_dir}", "model.n_layer=1",
             "data.tokenizer.vocab_size=512", "data.block_size=32", *overrides],
            default_preset="pretrain-tiny",
        )  # fmt: skip

    for overrides, key, says in [
        (["scaling.use_gpu=true"], "scaling.use_gpu", "asks for 2 GPU(s)"),
        (["scaling.num_workers=4", "train.global_batch_size=32"], "scaling.num_workers",
         "asks for 4 CPUs"),
    ]:  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as e:
            pretrain(job(*overrides))
        assert time.monotonic() - t0 < 30
        assert e.value.key == key and says in str(e.value) and "2 CPU/0 GPU" in str(e.value)
