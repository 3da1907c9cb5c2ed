"""ZeRO-3 evaluation with a validation set that gives ranks unequal shares: every rank runs the
same number of forwards (a ZeRO-3 forward gathers parameters collectively; before, rank 0 ran
2 and rank 1 ran 1, and the run hung), and the loss equals one process's loss over all blocks.
Two real processes over gloo with DeepSpeed on CPU (~30 s); no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.processes.network import free_port

pytestmark = [pytest.mark.integration, pytest.mark.deepspeed]

ROOT = Path(__file__).resolve().parents[2]


def test_zero3_eval_with_unequal_shares_finishes_and_is_exact(tmp_path: Path):
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.zero3_eval_worker",
                str(r),
                "2",
                port,
                str(tmp_path / f"rank{r}.json"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail("ZeRO-3 evaluation did not finish in 240 s: ranks ran unequal forwards")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[0]["loss"] == pytest.approx(got[1]["loss"], rel=1e-9)
    assert got[0]["loss"] == pytest.approx(got[0]["reference"], rel=1e-5)
