"""`fedray simulate --centralized` (the baseline) and sampled evaluation, in one process
(LocalGrid: no Ray, no Flower processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.client_app import app as client_app
from orchestrator.baseline.centralized import centralized, examples_per_round
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated

ensure_task_identity()


def job(cache_dir: Path, run_dir: Path, *overrides: str) -> FederatedJob:
    small = [
        f"data.cache_dir={cache_dir}",
        f"run.dir={run_dir}",
        "model.path=null",
        "data.tokenizer.path=null",
        "model.d_model=16",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.vocab_size=512",
        "task.max_length=16",
        "partition.max_examples_per_site=21",
        "train.micro_batch_size=4",
        "finetune.local_steps=null",
        "federation.eval_every=1",
        "federation.num_rounds=1",
    ]
    return load_config(FederatedJob, None, [*small, *overrides], default_preset="simulate-demo")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_examples_per_round_by_hand():
    # 10 rows, batches of 4: an epoch is 3 batches of 4, 4, 2 examples.
    assert examples_per_round(10, 4, None, 1) == 10
    assert examples_per_round(10, 4, None, 2) == 20
    assert examples_per_round(10, 4, 2, 1) == 8
    assert examples_per_round(10, 4, 3, 1) == 10
    assert examples_per_round(10, 4, 4, 1) == 14  # a second epoch's first batch
    assert examples_per_round(3, 8, 5, 1) == 15  # every step is a whole (short) epoch
    assert examples_per_round(0, 4, 2, 1) == 0


def test_centralized_processes_what_the_federation_processes(cache_dir, tmp_path):
    # One epoch per round: each site processes its own training rows (the last batch partial),
    # and the federation's round processes the sum of the sites' num-examples.
    fed = run_federated(
        LocalGrid(client_app, [{"partition-id": i, "num-partitions": 4} for i in range(4)]),
        job(cache_dir, tmp_path / "fed"),
        tmp_path / "fed",
    )
    fed_examples = sum(
        s["num-examples"] for name, s in fed.rounds[1]["sites"].items() if "train-loss" in s
    )
    base = centralized(job(cache_dir, tmp_path / "central", "federation.num_rounds=2"))
    got = rows(tmp_path / "central")
    assert [r["round"] for r in got] == [0, 1, 2] == [r["round"] for r in base.rounds]
    for r in got[1:]:
        assert r["centralized"] is True
        assert r["train"]["examples-processed"] == fed_examples == 4 * 17  # 21 rows, 4 held out
        assert r["train"]["train-steps"] == 17  # 68 examples in batches of 4
    for r in got:  # per-site rows on each site's own held-out rows, and the pooled metrics
        assert sorted(r["sites"]) == [f"site-{i}" for i in range(4)]
        assert all(s["eval-examples"] == 4 for s in r["sites"].values())
        assert {"accuracy", "macro-f1", "eval-loss"} <= set(r["eval"])
        assert r["eval"]["num-examples"] == 16
    # The same starting model and held-out rows as the federation: round 0 matches exactly.
    assert got[0]["eval"]["accuracy"] == fed.rounds[0]["eval"]["accuracy"]
    assert got[0]["eval"]["eval-loss"] == pytest.approx(fed.rounds[0]["eval"]["eval-loss"])
    assert (tmp_path / "central" / "export" / "config.json").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        centralized(job(cache_dir, tmp_path / "central"))


def test_sampled_evaluation_and_eval_every(cache_dir, tmp_path):
    j = job(
        cache_dir,
        tmp_path,
        "federation.num_sites=5",
        "federation.num_rounds=3",
        "federation.eval_sites_per_round=2",
        "federation.eval_every=2",
        "federation.sites_per_round=1",
        "federation.min_sites=1",
        "finetune.local_steps=1",
        "partition.kind=iid",
        "partition.max_examples_per_site=8",
    )
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 5} for i in range(5)])
    result = run_federated(grid, j, tmp_path)
    evaluated = [
        sorted(n for n, s in r["sites"].items() if "eval-loss" in s) for r in result.rounds
    ]
    assert [len(e) for e in evaluated] == [2, 0, 2, 5]  # round 1 skipped; the last: every site
    assert result.rounds[1]["eval"] == {} and result.rounds[2]["eval"]
    assert grid.messages_handled == 2 + 1 + (1 + 2) + (1 + 5)


def test_eval_sampling_settings_are_validated(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"federation\.eval_sites_per_round"):
        job(cache_dir, tmp_path, "federation.eval_sites_per_round=5")  # 4 sites
    with pytest.raises(ConfigError, match=r"federation\.eval_every"):
        job(cache_dir, tmp_path, "federation.eval_every=0")
    fed = job(cache_dir, tmp_path, "federation.num_rounds=5", "federation.eval_every=2").federation
    assert [r for r in range(6) if fed.evaluates(r)] == [0, 2, 4, 5]
