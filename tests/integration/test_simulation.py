"""`fedray simulate` on Flower's simulation engine with a real embedded Ray.

Runs in a subprocess: Flower's Ray backend calls ``ray.shutdown()`` when it finishes, which
would also stop the session-wide Ray that other integration tests share (``ray_local``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_four_sites_two_rounds_improve_over_round_zero(tmp_path: Path, cache_dir: Path):
    run_dir = tmp_path / "fed"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "simulate",
            "federation.num_sites=4",
            "federation.num_rounds=2",
            f"data.cache_dir={cache_dir}",
            f"run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    acc = [r["eval"]["accuracy"] for r in rows]
    assert acc[-1] > acc[0] + 0.03, acc
    assert rows[-1]["eval"]["eval-loss"] < rows[0]["eval"]["eval-loss"]
    assert len(rows[-1]["sites"]) == 4 and rows[-1]["train"]["sites-accepted"] == 4
    # The table and the partition summary were printed.
    assert "partition (natural): 4 sites" in proc.stdout
    assert "macro-F1" in proc.stdout
    # The export loads with plain transformers.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "export"))
    assert model.config.num_labels == 3
