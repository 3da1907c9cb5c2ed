"""`fedray submit` and `fedray jobs` against a real `ray start --head` with its dashboard, through
the CLI a user types: a job that runs to completion (logs streamed, export on the run dir), then
`jobs list`, `jobs logs`, and `jobs stop` of a long job."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ray_head import RayHead, ray_head

pytestmark = pytest.mark.integration

TINY = [
    "scaling.num_workers=1", "train.global_batch_size=4", "train.micro_batch_size=4",
    "model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.block_size=32",
    "data.tokenizer.vocab_size=512", "train.eval_every=0", "train.warmup_steps=1",
]  # fmt: skip


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
