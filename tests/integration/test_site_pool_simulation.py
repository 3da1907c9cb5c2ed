"""`fedray simulate` with a simulation pool: 50 simulated sites take turns on 5 SuperNodes of
Flower's real engine (orchestrator/contract/site_pool.py); the final evaluation visits every
site once, in waves of the pool."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.integration.test_simulation import _run_watching_descendants, _survivors

pytestmark = pytest.mark.integration

SITES, POOL = 50, 5


def test_fifty_sites_on_a_pool_of_five(tmp_path: Path, cache_dir: Path):
    run_dir = tmp_path / "fed"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    argv = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "simulate",
        f"federation.num_sites={SITES}",
        f"federation.simulation_nodes={POOL}",
        "federation.num_rounds=1",
        "federation.sites_per_round=5",
        "federation.eval_sites_per_round=3",
        "federation.min_sites=3",
        "federation.eval_every=1",
        "federation.num_cpus=2",
        "partition.kind=iid",
        "partition.max_examples_per_site=6",
        "finetune.local_steps=1",
        "model.path=null",  # build the small model below (not the bundled one)
        "model.d_model=32",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.path=null",
        "data.tokenizer.vocab_size=512",
        "task.max_length=24",
        f"data.cache_dir={cache_dir}",
        f"run.dir={run_dir}",
    ]
    rc, out, seen = _run_watching_descendants(argv, env, tmp_path / "out.txt", timeout=240)
    assert rc == 0, out[-6000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    # Rows name sites by site id (0..49), never by one of the 5 pool nodes' ids.
    names = {s for r in rows for s in r["sites"]}
    assert names <= {f"site-{i}" for i in range(SITES)}, names
    assert len(rows[0]["sites"]) == 3
    assert all(r["train"]["sites-accepted"] == 5 for r in rows[1:])
    # The last round evaluates all 50 sites, in waves of 5 (a node never holds two messages).
    assert len(rows[-1]["sites"]) == SITES
    assert all("eval-loss" in s for s in rows[-1]["sites"].values())
    assert rows[-1]["eval"]["num-examples"] > 0
    # The engine ran 5 SuperNodes (Flower's own line, kept in run.log).
    assert f"({POOL} simulated SuperNodes)" in (run_dir / "run.log").read_text()
    assert _survivors(seen) == []
