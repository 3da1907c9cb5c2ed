"""DDP pretraining on real Ray Train workers (2 workers over gloo on CPU).

Runs are shared between tests through module-scoped fixtures: each Ray ``fit()`` costs 20-30 s
on 2 cores. Nothing here mocks Ray or torch.distributed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.config import PretrainJob
from orchestrator.pretrain import PretrainResult, pretrain
from orchestrator.pretrain.checkpoint import latest_complete, list_checkpoints
from orchestrator.processes.network import free_port
from tests.integration import pretrain_jobs
from tests.integration.pretrain_jobs import step_values

pytestmark = pytest.mark.integration

STEPS = 8


def tiny_job(root: Path, cache: Path, name: str, *overrides: str) -> PretrainJob:
    """Global batch 8 = 2 workers x micro 4; BPE vocab 512; a checkpoint every 4 steps."""
    return pretrain_jobs.tiny_job(
        root,
        cache,
        name,
        *overrides,
        steps=STEPS,
        micro_batch_size=4,
        vocab_size=512,
        checkpoint_every=4,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def two_workers(ray_local: str, runs: Path, cache_dir: Path) -> PretrainResult:
    return pretrain(tiny_job(runs, cache_dir, "ddp2"))


def test_loss_falls_and_run_dir_is_complete(two_workers: PretrainResult):
    losses = step_values(two_workers)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5, losses
    d = two_workers.run_dir
    assert (d / "config.yaml").is_file() and (d / "tokenizer" / "tokenizer.json").is_file()
    assert [p.name for p in list_checkpoints(d)] == ["checkpoint_00000008", "checkpoint_00000004"]
    final = [m for m in two_workers.metrics if "val_loss" in m]
    assert len(final) == 1 and final[0]["step"] == STEPS and final[0]["val_ppl"] > 1
    rec = next(m for m in two_workers.metrics if m.get("step") == 1)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time"} <= set(rec)
    assert json.loads((d / "summary.json").read_text())["final_step"] == STEPS


def test_two_workers_equal_one_worker_with_accumulation(
    two_workers: PretrainResult, runs: Path, cache_dir: Path
):
    """Same global batch of 8: 2 workers x micro 4 vs 1 worker x micro 4 x 2 accumulation steps."""
    one = pretrain(tiny_job(runs, cache_dir, "ddp1", "scaling.num_workers=1", "fault.rank=0"))
    a, b = step_values(two_workers), step_values(one)
    for step in range(1, STEPS + 1):
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), (step, a[step], b[step])


def test_resume_after_stop_matches_uninterrupted(
    two_workers: PretrainResult, runs: Path, cache_dir: Path
):
    """Stop after step 4 (no retries), then re-run the same run name: resumes at step 4 exactly."""
    import ray.train

    with pytest.raises(ray.train.TrainingFailedError):
        pretrain(tiny_job(runs, cache_dir, "resume", "fault.fail_at_step=4", "run.max_failures=0"))
    info = latest_complete(runs / "resume")
    assert info is not None and info.step == 4
    resumed = pretrain(tiny_job(runs, cache_dir, "resume"))
    assert resumed.final_step == STEPS
    assert any(
        "resumed from checkpoint_00000004 at step 4" in m.get("event", "") for m in resumed.metrics
    )
    ref, got = step_values(two_workers), step_values(resumed)
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_killed_worker_restarts_from_checkpoint(
    two_workers: PretrainResult, runs: Path, cache_dir: Path
):
    """Rank 1 dies (os._exit) before step 7; Ray restarts the group from checkpoint 4."""
    result = pretrain(
        tiny_job(
            runs,
            cache_dir,
            "killed",
            "fault.fail_at_step=6",
            "fault.mode=kill",
            "run.max_failures=1",
        )
    )
    assert result.final_step == STEPS
    assert (result.run_dir / ".fault-injected").read_text().startswith("step=6 rank=1 mode=kill")
    events = [m["event"] for m in result.metrics if "event" in m]
    assert any("resumed from checkpoint_00000004 at step 4" in e for e in events), events
    steps_logged = [m["step"] for m in result.metrics if "loss" in m]
    assert steps_logged.count(5) == 2 and steps_logged.count(7) == 1  # 5-6 redone, 7-8 once
    ref, got = step_values(two_workers), step_values(result)
    assert got[STEPS] == pytest.approx(ref[STEPS], rel=1e-5)


def test_export_loads_with_plain_transformers_and_matches(two_workers: PretrainResult):
    """A fresh interpreter that never imports fedray loads the export; logits match the checkpoint."""
    from orchestrator.models import build_model
    from orchestrator.pretrain.backends.ddp import load_model_state

    export = two_workers.export_dir
    x = np.random.default_rng(0).integers(0, 500, size=(2, 16))
    np.save(export.parent / "x.npy", x)
    script = (
        "import sys, numpy as np, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(export)!r}).eval()\n"
        f"tok = AutoTokenizer.from_pretrained({str(export)!r})\n"
        "assert tok('In the beginning')['input_ids']\n"
        f"x = torch.from_numpy(np.load({str(export.parent / 'x.npy')!r}))\n"
        "with torch.no_grad(): np.save(sys.argv[1], m(x).logits.numpy())\n"
        "assert 'orchestrator' not in sys.modules\n"
    )
    out = export.parent / "logits.npy"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd="/", timeout=120)
    info = latest_complete(two_workers.run_dir)
    model = build_model(json.loads((export / "config.json").read_text()))
    model.load_state_dict(load_model_state(info.path), strict=False)
    model.tie_weights()
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-5)


def test_cli_against_existing_ray_cluster(tmp_path: Path, cache_dir: Path):
    """`ray start --head` on 127.0.0.1, `fedray pretrain cluster.address=...`, cluster left running,
    then stopped here by the PID of the blocking `ray start` (which takes its children with it)."""
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            probe = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ray.scripts.scripts",
                    "status",
                    f"--address=127.0.0.1:{port}",
                ],
                capture_output=True,
                env=env,
            )
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("Ray head did not come up")
        cmd = [
            sys.executable, "-m", "orchestrator.cli", "pretrain", f"cluster.address=127.0.0.1:{port}",
            f"run.root={tmp_path}", "run.name=on-cluster", f"data.cache_dir={cache_dir}",
            "train.max_steps=4", "train.global_batch_size=8", "train.micro_batch_size=4",
            "model.n_layer=1", "model.d_model=64", "model.n_head=2", "data.block_size=32",
            "data.tokenizer.vocab_size=512", "checkpoint.every_steps=2",
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Hugging Face export" in r.stdout
        assert (tmp_path / "on-cluster" / "export" / "model.safetensors").is_file()
        # The cluster is still up after the job (fedray only disconnected).
        assert head.poll() is None
        status = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "status", f"--address=127.0.0.1:{port}"],
            capture_output=True,
            env=env,
        )
        assert status.returncode == 0
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_compress_the_export_on_the_runs_validation_blocks(two_workers: PretrainResult):
    """`fedray compress RUN_DIR/export --method int8` of a real pretraining run: measured on the
    run's validation blocks, written beside the export, shown by `fedray report RUN_DIR`."""
    from orchestrator.cli import main
    from orchestrator.report import build_report

    run = two_workers.run_dir
    assert main(["compress", str(two_workers.export_dir), "--method", "int8"]) == 0
    rec = json.loads((run / "export-int8" / "compression.json").read_text())
    assert str(run / "config.yaml") in rec["eval_source"] and rec["eval_rows"] > 0
    assert (rec["quantized_modules"], rec["linear_modules"]) == (8, 9)
    assert rec["after"]["perplexity"] <= 1.01 * rec["before"]["perplexity"]
    assert "Compressed exports" in build_report([run]).html.read_text()
