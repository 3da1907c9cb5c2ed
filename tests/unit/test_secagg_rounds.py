"""Secure aggregation through the real server loop and ClientApp (LocalGrid, in-process).

The model after a secure round equals the plain uniform-FedAvg model up to quantization; a site
that drops after sharing its keys is recovered; too many dropouts skip the round, model unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from clients.client_app import app as client_app
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.contract import secagg as wire
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.federated.setup import prepare
from orchestrator.secagg.quantize import step

ensure_task_identity()
SITES = [{"partition-id": i, "num-partitions": 3} for i in range(3)]


def job(cache_dir: Path, *overrides: str) -> FederatedJob:
    small = [
        f"data.cache_dir={cache_dir}",
        "model.path=null",  # build the small model below (not the bundled one)
        "model.d_model=16",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.vocab_size=512",
        "task.max_length=16",
        "partition.max_examples_per_site=16",
        "finetune.local_steps=1",
        "train.micro_batch_size=8",
        "federation.num_sites=3",
        "strategy.weighting=uniform",
    ]
    return load_config(FederatedJob, None, [*small, *overrides], default_preset="simulate-demo")


def final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return load_file(str(last / "global.safetensors"))


@pytest.mark.integration  # two federated runs (~7 s): beyond the unit tier's budget
def test_secure_round_equals_plain_fedavg_up_to_quantization(cache_dir, tmp_path):
    plain = job(cache_dir, "federation.num_rounds=1")
    secure = job(cache_dir, "federation.num_rounds=1", "privacy.secure_aggregation=true")
    setup = prepare(plain)
    run_federated(LocalGrid(client_app, SITES), plain, tmp_path / "plain", setup=setup)
    grid = LocalGrid(client_app, SITES)
    result = run_federated(grid, secure, tmp_path / "secure", setup=prepare(secure))
    assert grid.messages_handled == 3 * 4 + 3 * 2  # 4 secure exchanges, 2 evaluations
    row = result.rounds[1]
    assert not row["skipped"] and row["train"]["sites-accepted"] == 3
    a, b = final_arrays(tmp_path / "plain"), final_arrays(tmp_path / "secure")
    assert a.keys() == b.keys()
    tol = step(1.0, 3) + 1e-6  # one quantization step of the mean, + float32 rounding
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=tol, rtol=0)
    assert max(float(np.max(np.abs(b[k] - a[k]))) for k in a) > 0  # quantized: not bit-equal


class Dropping:
    """The ClientApp, except that ``nodes`` fail every ``secagg_mask`` message."""

    def __init__(self, nodes: set[int]) -> None:
        self.nodes = nodes

    def __call__(self, msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == wire.MASK and context.node_id in self.nodes:
            raise ConnectionError("site went away")
        return client_app(msg, context)


@pytest.mark.integration
def test_dropout_after_sharing_is_recovered_and_too_many_skip(cache_dir, tmp_path):
    j = job(
        cache_dir,
        "federation.num_rounds=1",
        "privacy.secure_aggregation=true",
        "privacy.secagg_threshold=2",
    )
    result = run_federated(LocalGrid(Dropping({2}), SITES), j, tmp_path / "one", setup=prepare(j))
    row = result.rounds[1]
    assert not row["skipped"] and row["train"]["sites-accepted"] == 2
    assert any("secagg_mask" in s.get("rejected", "") for s in row["sites"].values())

    j = job(
        cache_dir,
        "federation.num_rounds=1",
        "privacy.secure_aggregation=true",
        "privacy.secagg_threshold=3",
    )
    run_dir = tmp_path / "two"
    setup = prepare(j)
    result = run_federated(LocalGrid(Dropping({2}), SITES), j, run_dir, setup=setup)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert row["skipped"] and "threshold" in row["skip_reason"]
    start = {k: v.numpy() for k, v in setup.model.state_dict().items()}
    for k, v in final_arrays(run_dir).items():
        np.testing.assert_array_equal(v, start[k])


@pytest.mark.integration
def test_distributed_dp_with_secure_aggregation_reports_epsilon(cache_dir, tmp_path):
    j = job(
        cache_dir,
        "federation.num_rounds=1",
        "privacy.secure_aggregation=true",
        "privacy.mode=central",
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=0.5",
    )
    result = run_federated(LocalGrid(client_app, SITES), j, tmp_path / "dp", setup=prepare(j))
    row = result.rounds[1]
    assert not row["skipped"] and row["epsilon"] > 0
    assert row["train"]["noise-multiplier-effective"] >= 1.0  # >= what the ledger charged
    stds = [s["dp-site-noise-std"] for s in row["sites"].values() if "dp-site-noise-std" in s]
    assert len(stds) == 3
    assert all(
        s["dp-site-noise-std"] == pytest.approx(0.5 / np.sqrt(2))  # z C / sqrt(t)
        for s in row["sites"].values()
        if "dp-site-noise-std" in s
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.name=median", "name"),
        ("strategy.weighting=examples", "weighting"),
        ("strategy.clip_update_norm=1.0", "clip_update_norm"),
        ("privacy.secagg_threshold=1", "secagg_threshold"),
    ],
)
def test_settings_secure_aggregation_cannot_run_are_config_errors(cache_dir, override, key):
    with pytest.raises(ConfigError) as e:
        job(cache_dir, "privacy.secure_aggregation=true", override)
    assert key in str(e.value)
