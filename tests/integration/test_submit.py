"""`fedray submit` and `fedray jobs` against a real `ray start --head` with its dashboard, through
the CLI a user types: a job that runs to completion (logs streamed, export on the run dir), then
`jobs list`, `jobs logs`, and `jobs stop` of a long job; a federated config, which runs as
`fedray simulate` on the cluster (its round table streamed, its round records on the run dir);
and a tune config, which runs `fedray tune` on the cluster (its trials as the cluster's tasks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.ray_head import RayHead, ray_head

pytestmark = pytest.mark.integration

TINY = [
    "scaling.num_workers=1", "train.global_batch_size=4", "train.micro_batch_size=4",
    "model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.block_size=32",
    "data.tokenizer.vocab_size=512", "train.eval_every=0", "train.warmup_steps=1",
]  # fmt: skip


# The demo federation (bundled model, tokenizer and tweets: they travel with the shipped code),
# cut to 2 sites x 1 round of 1 local step on a few rows.
FEDERATED = [
    "simulate-demo", "federation.num_sites=2", "federation.num_rounds=1",
    "federation.min_sites=2", "federation.eval_every=1", "partition.kind=iid",
    "partition.max_examples_per_site=24", "finetune.local_steps=1",
    "train.micro_batch_size=8", "task.max_length=24",
]  # fmt: skip
ROUND_ROW = re.compile(r"^\s*(\d+) +(?:-|\d+\.\d+) +\d+\.\d+ ")
"""A row of the round table: round, train-loss (- for round 0), eval-loss, ..."""


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head(num_cpus=2) as h:
        yield h


def fedray(head: RayHead, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args, "--address", head.dashboard_url],
        capture_output=True, text=True, env=head.env, timeout=timeout,
    )  # fmt: skip


def test_submit_streams_logs_then_jobs_list_logs_stop(
    head: RayHead, tmp_path: Path, cache_dir: Path
):
    r = fedray(
        head, "submit", *TINY, "train.max_steps=3", "checkpoint.every_steps=3",
        f"run.root={tmp_path}", "run.name=submitted", f"data.cache_dir={cache_dir}",
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    job_id = re.search(r"submitted (\S+) to", r.stdout).group(1)
    assert f"run dir on the cluster: {tmp_path}/submitted" in r.stdout
    assert "[fedray] done" in r.stdout and f"{job_id}: SUCCEEDED" in r.stdout  # streamed logs
    assert (tmp_path / "submitted" / "export" / "model.safetensors").is_file()

    listed = fedray(head, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and str(tmp_path / "submitted") in row

    logs = fedray(head, "jobs", "logs", job_id)
    assert logs.returncode == 0 and "Hugging Face export" in logs.stdout

    # A long job, stopped while it runs: SIGTERM unwinds `fedray pretrain` (status STOPPED).
    r = fedray(
        head, "submit", *TINY, "train.max_steps=100000", f"run.root={tmp_path}",
        "run.name=stopped", f"data.cache_dir={cache_dir}", "--no-wait",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    long_id = re.search(r"submitted (\S+) to", r.stdout).group(1)
    deadline = time.monotonic() + 120
    while "[fedray] run " not in fedray(head, "jobs", "logs", long_id).stdout:
        assert time.monotonic() < deadline, "the long job never started training"
        time.sleep(2)
    stop = fedray(head, "jobs", "stop", long_id, "--wait")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"{long_id}: STOPPED" in stop.stdout


def test_submit_a_federated_config_runs_the_simulation_on_the_cluster(
    head: RayHead, tmp_path: Path
):
    r = fedray(head, "submit", *FEDERATED, f"run.root={tmp_path}", "run.name=fed", timeout=400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    job_id = re.search(r"submitted (\S+) to", r.stdout).group(1)
    assert f"run dir on the cluster: {tmp_path}/fed" in r.stdout
    # It joined the cluster it was submitted to (the job's RAY_ADDRESS: the head's GCS port on
    # the machine's own address), sites as Ray actors.
    port = head.gcs_address.rsplit(":", 1)[1]
    joined = rf"simulation on the Ray cluster at [\w.-]+:{port}: 1 node\(s\), 2 site\(s\) at once"
    assert re.search(joined, r.stdout), out[-4000:]
    lines = r.stdout.splitlines()
    assert any(line.split()[:3] == ["round", "train-loss", "eval-loss"] for line in lines), out
    assert [m.group(1) for m in map(ROUND_ROW.match, lines) if m] == ["0", "1"], out[-4000:]
    assert "\x1b[" not in r.stdout  # a job log is no terminal: no colour codes, no bar
    assert f"{job_id}: SUCCEEDED" in r.stdout
    run_dir = tmp_path / "fed"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1]
    assert rows[1]["train"]["sites-accepted"] == 2
    assert (run_dir / "export" / "model.safetensors").is_file()
    # The job's log, read again afterwards, holds the same table.
    logs = fedray(head, "jobs", "logs", job_id)
    assert logs.returncode == 0
    assert [m.group(1) for m in map(ROUND_ROW.match, logs.stdout.splitlines()) if m] == ["0", "1"]


def test_submit_a_tune_config_runs_the_search_on_the_cluster(
    head: RayHead, tmp_path: Path, cache_dir: Path
):
    """A 2-trial search of a tiny pretraining job: `fedray tune` is the job's entrypoint, joined
    to the cluster it was submitted to; its trial table streams back and its files land on the
    run dir."""
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"family": "gpt2", "n_layer": 1, "n_head": 2, "d_model": 32},
                "data": {"block_size": 32, "cache_dir": str(cache_dir), "tokenizer": {"vocab_size": 512}},
                "train": {
                    "max_steps": 2, "global_batch_size": 4, "micro_batch_size": 4,
                    "warmup_steps": 1, "eval_every": 2, "log_every": 100,
                },
                "scaling": {"num_workers": 1},
                "checkpoint": {"every_steps": 2},
                "run": {"dir": str(tmp_path / "searched")},
                "tune": {"space": {"train.lr": {"choice": [1e-3, 3e-3]}}, "num_samples": 2},
            }
        )
    )  # fmt: skip
    r = fedray(head, "submit", str(cfg), timeout=400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    job_id = re.search(r"submitted (\S+) to", r.stdout).group(1)
    assert f"{job_id}: SUCCEEDED" in r.stdout, out[-4000:]
    d = tmp_path / "searched"
    assert f"[fedray] tune {d} | pretrain" in r.stdout  # streamed from the cluster
    trials = [json.loads(x) for x in (d / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and all(t["status"] == "complete" for t in trials), trials
    assert {t["config"]["train.lr"] for t in trials} <= {1e-3, 3e-3}
    assert yaml.safe_load((d / "tune.yaml").read_text())["cluster"]["address"] == "auto"
    assert (d / "best.yaml").is_file()
