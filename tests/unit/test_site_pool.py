"""Simulated sites on a pool of nodes (orchestrator/contract/site_pool.py): a pooled run is the
unpooled run (same samples, same model, SCAFFOLD's per-site state), a full evaluation visits
every site once in waves, real sites refuse a named site, and the config is validated."""
# ruff: noqa: RUF005  (override lists read best as one line per concern)

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients.client_app import app as client_app
from clients.site_state import DiskBackend, site_store
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.contract.site_pool import (
    SIM_SITE,
    acting_node_config,
    decode_site,
    site_record,
)
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.federated.setup import prepare
from orchestrator.federated.simulate import federation_config, site_pool_plan
from tests.unit.test_federated_rounds import job

ensure_task_identity()

SITES, POOL = 5, 2
COMMON = (
    f"federation.num_sites={SITES}",
    "federation.sites_per_round=2",
    "federation.eval_sites_per_round=1",
    "federation.min_sites=1",
    "partition.kind=iid",
    "partition.max_examples_per_site=8",
    "finetune.local_steps=1",
)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_arrays(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return load_file(str(last / name)) if (last / name).exists() else {}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_pooled_run_is_the_unpooled_run(cache_dir, tmp_path):
    j = job(cache_dir, *COMMON, "federation.num_rounds=2")
    # One setup each: a run leaves its final model in setup.model.
    run_federated(LocalGrid.simulated(client_app, SITES), j, tmp_path / "flat", setup=prepare(j))
    pool = LocalGrid.simulated(client_app, POOL)
    pool.record_sent = True
    run_federated(pool, j, tmp_path / "pool", setup=prepare(j), site_pool=True)

    flat, pooled = rows(tmp_path / "flat"), rows(tmp_path / "pool")
    assert pool.overlaps == 0  # never two messages in flight to one node
    for a, b in zip(flat, pooled, strict=True):
        # Same sites sampled, named by site id (not by pool node), same per-site numbers.
        assert sorted(a["sites"]) == sorted(b["sites"])
        for site, row in a["sites"].items():
            assert {k: v for k, v in row.items() if k != "bytes-down"} == {
                k: v for k, v in b["sites"][site].items() if k != "bytes-down"
            }
        assert a.get("train") == b.get("train")
        assert a["eval"] == b["eval"]
    assert all(k.startswith("site-") for r in pooled for k in r["sites"])
    assert_same_arrays(
        final_arrays(tmp_path / "flat", "global.safetensors"),
        final_arrays(tmp_path / "pool", "global.safetensors"),
    )
    # The last round evaluates every site: in waves of the pool, each site exactly once.
    last = [
        decode_site(m.content)
        for _, kind, m in pool.sent_to
        if kind == "evaluate" and m.content["config"]["server-round"] == 2
    ]
    assert sorted(s for s, _ in last) == list(range(SITES))  # type: ignore[misc]
    assert len(pooled[-1]["sites"]) == SITES
    assert all("eval-loss" in r for r in pooled[-1]["sites"].values())


def test_scaffold_on_a_pool_resumes_exactly(cache_dir, tmp_path):
    """A pooled SCAFFOLD run stopped after round 2 and resumed (fresh nodes, empty contexts)
    ends where an uninterrupted unpooled run ends, server c and model bit for bit: the sites'
    c_i are per site and on disk."""
    base = (
        *COMMON,
        "strategy.name=scaffold",
        "federation.final_eval_all=false",
        "federation.eval_every=10",
    )
    j2 = job(cache_dir, *base, "federation.num_rounds=2")
    j3 = job(cache_dir, *base, "federation.num_rounds=3")
    run_federated(LocalGrid.simulated(client_app, SITES), j3, tmp_path / "flat", setup=prepare(j3))
    for j in (j2, j3):  # one setup each: a run leaves its final model in setup.model
        grid = LocalGrid.simulated(client_app, POOL)
        run_federated(grid, j, tmp_path / "pool", setup=prepare(j), site_pool=True)
        assert grid.overlaps == 0
        for ctx in grid.contexts.values():  # never in a pool node's Context
            assert not any("fedray-site-state" in k for k in ctx.state)
    pooled = rows(tmp_path / "pool")
    assert [r["round"] for r in pooled] == [0, 1, 2, 3]
    flat = rows(tmp_path / "flat")
    # The same sites trained (and evaluated; round 2 was j2's last, so it evaluated there).
    for i in (0, 1, 3):
        assert sorted(flat[i]["sites"]) == sorted(pooled[i]["sites"])
    trained = {s for r in pooled[1:] for s, row in r["sites"].items() if "train-loss" in row}
    assert {p.name for p in (tmp_path / "pool" / "site-state").iterdir()} == trained
    for name in ("global.safetensors", "strategy.safetensors"):
        assert_same_arrays(
            final_arrays(tmp_path / "flat", name), final_arrays(tmp_path / "pool", name)
        )


def _content(site: int, num: int) -> RecordDict:
    return RecordDict({SIM_SITE: site_record(site, num)})


def test_a_simulated_node_acts_for_the_named_site_and_a_real_site_refuses():
    node = {"partition-id": 1, "num-partitions": 3}
    acting = acting_node_config(_content(41, 500), node)
    assert (acting["partition-id"], acting["num-partitions"]) == (41, 500)
    assert acting_node_config(RecordDict({}), node) == node  # no record: its own config
    real = {"data-path": "/data/bank.csv", "partition-id": 0, "num-partitions": 1}
    with pytest.raises(ValueError, match="real site"):
        acting_node_config(_content(0, 2), real)
    with pytest.raises(ValueError, match="real site"):
        acting_node_config(_content(0, 2), {"data-path": "/data/bank.csv"})


def test_a_real_site_replies_with_an_error_to_a_named_site(cache_dir, tmp_path):
    """Through the ClientApp: the message never reaches training at a real site."""
    f = tmp_path / "site.csv"
    f.write_text("text,label\n" + "".join(f"tweet {i},negative\n" for i in range(10)))
    j = job(cache_dir, "federation.num_sites=2", "federation.num_rounds=1")
    setup = prepare(j)
    grid = LocalGrid(client_app, [{"data-path": str(f)}, {"data-path": str(f)}])
    run_federated(grid, j, tmp_path / "run", setup=setup, site_pool=True)
    r0, r1 = rows(tmp_path / "run")
    assert len(r0["sites"]) == 2 and all(
        "real site" in s["eval-error"] for s in r0["sites"].values()
    )
    assert r1["skipped"] and r1["train"]["sites-accepted"] == 0
    assert all("real site" in s["rejected"] for s in r1["sites"].values() if "rejected" in s)


@pytest.mark.parametrize(
    "record, match",
    [
        (ConfigRecord({"site-id": 3}), "integers"),
        (ConfigRecord({"site-id": 3, "num-sites": 3}), "out of range"),
        (ConfigRecord({"site-id": -1, "num-sites": 3}), "out of range"),
        (ConfigRecord({"site-id": True, "num-sites": 3}), "integers"),
        (ConfigRecord({"site-id": 0, "num-sites": 10**9}), "out of range"),
    ],
)
def test_a_malformed_site_record_is_refused(record, match):
    with pytest.raises(ValueError, match=match):
        decode_site(RecordDict({SIM_SITE: record}))


def test_pooled_site_state_lives_per_site_on_disk(tmp_path):
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    pooled = acting_node_config(_content(7, 50), {"partition-id": 0, "num-partitions": 2})
    store = site_store(ctx, "k1", 2, pooled, str(tmp_path))
    (backend,) = store.backends
    assert isinstance(backend, DiskBackend) and backend.root == tmp_path / "site-7" / "k1"
    store.save("scaffold-c", {"w": np.ones(2, np.float32)})
    assert len(ctx.state) == 0  # never in the node's Context
    # Without a mirror directory: the node's Context, scoped by site.
    other = site_store(ctx, "k1", 2, pooled, "")
    other.save("scaffold-c", {"w": np.ones(2, np.float32)})
    assert all("/site-7/" in k for k in ctx.state)


def fed_job(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, None, list(overrides), default_preset="simulate-demo")


def test_the_pool_turns_on_above_the_threshold_and_is_validated():
    small = fed_job("federation.num_sites=1000", "federation.sites_per_round=10")
    assert small.federation.simulation_pool() is None
    assert federation_config(small)["num-supernodes"] == 1000
    assert site_pool_plan(small).startswith("off (auto)")
    big = fed_job("federation.num_sites=1001", "federation.sites_per_round=10")
    assert big.federation.simulation_pool() == 100
    assert federation_config(big)["num-supernodes"] == 100
    assert "1001 sites take turns on 100 SuperNodes" in site_pool_plan(big)
    wide = fed_job(
        "federation.num_sites=5000",
        "federation.sites_per_round=10",
        "federation.eval_sites_per_round=300",
    )
    assert wide.federation.simulation_pool() == 300
    # Secure aggregation keeps one node per site (auto), and refuses an explicit pool.
    assert big.federation.simulation_pool(secure_aggregation=True) is None
    explicit = fed_job(
        "federation.num_sites=50", "federation.sites_per_round=5", "federation.simulation_nodes=5"
    )
    assert explicit.federation.simulation_pool() == 5
    whole = fed_job("federation.num_sites=50", "federation.simulation_nodes=50")
    assert whole.federation.simulation_pool() is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["federation.num_sites=50", "federation.sites_per_round=1", "federation.min_sites=1"]
            + ["federation.simulation_nodes=51"],
            r"\[1, .*=50\]",
        ),
        (
            ["federation.num_sites=50", "federation.sites_per_round=10"]
            + ["federation.simulation_nodes=9"],
            r"\[10, ",
        ),
        (
            ["federation.num_sites=50", "federation.eval_sites_per_round=12"]
            + ["federation.sites_per_round=10", "federation.simulation_nodes=11"],
            r"\[12, ",
        ),
        (
            ["federation.num_sites=50", "federation.sites_per_round=5"]
            + ["federation.simulation_nodes=5", "privacy.secure_aggregation=true"],
            "secure_aggregation",
        ),
    ],
)
def test_simulation_nodes_errors_name_the_key_and_the_fix(overrides: list[str], match: str):
    with pytest.raises(ConfigError, match=match) as e:
        fed_job(*overrides)
    assert "federation.simulation_nodes" in str(e.value)


def test_downlink_names_each_site_and_sends_the_base_once_per_node():
    """LoRA base-once on a pool: the NODE holds the base (its Context), so every site it acts
    for later gets the light message; each message carries its own site record."""
    from flwr.app import Message

    from orchestrator.contract.arrays import from_numpy
    from orchestrator.contract.compression import base_hash
    from orchestrator.contract.messages import BASE_HASH, SITE
    from strategies.downlink import Downlink

    arrays = {"base.w": np.ones(4, np.float32), "lora.a": np.zeros(2, np.float32)}
    down = Downlink(base_once=True)
    keys = ("arrays", "config")
    records = {1: site_record(40, 100), 2: site_record(7, 100)}
    first = down.messages(
        from_numpy(arrays),
        ConfigRecord({}),
        {"lora.a"},
        [1, 2],
        "train",
        keys,
        site_records=records,
    )
    assert [decode_site(m.content) for m in first] == [(40, 100), (7, 100)]
    assert all("base.w" in m.content["arrays"] for m in first)
    digest = base_hash({"base.w": arrays["base.w"]})
    reply = Message(
        RecordDict({SITE: ConfigRecord({"name": "site-40", BASE_HASH: digest})}), reply_to=first[0]
    )
    down.note(reply)
    again = down.messages(
        from_numpy(arrays),
        ConfigRecord({}),
        {"lora.a"},
        [1, 2],
        "train",
        keys,
        site_records={1: site_record(3, 100), 2: site_record(9, 100)},
    )
    assert decode_site(again[0].content) == (3, 100) and "base.w" not in again[0].content["arrays"]
    assert "base.w" in again[1].content["arrays"]
