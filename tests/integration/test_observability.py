"""Observability end to end: ``fedray pretrain`` and ``fedray simulate`` as users run them (a
subprocess each, real Ray / Flower): a quiet console, every line in RUN_DIR/run.log, errors still
shown, ``--verbose``, and TensorBoard event files read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.integration

# The lines the issue lists (and their relatives), as plain substrings: none may reach the
# console of a default run.
PRETRAIN_NOISE = (
    "Started a local Ray instance",
    "FutureWarning",
    "Requesting resources",
    "Attempting to start training worker group",
    "Started training worker group",
    "world_rank=",
    "Setting up process group",
    "Moving model to device",
    "Wrapping provided model",
    "Checkpoint successfully created",
    "Setting accelerator to CPU",
    "loss_type=None",
    "Writing model shards",
)
SIMULATE_NOISE = (
    "Using SuperLink",
    "Successfully started run",
    "Starting logstream",
    "simulated SuperNodes",
    "Successfully installed",
    "Manually terminating ClientAppActor",
    "flwr federation simulation-config",
    "FutureWarning",
    "Setting accelerator to CPU",
    "Writing model shards",
)


def run_cli(args: list[str], timeout: float) -> tuple[int, str]:
    """``python -m orchestrator.cli ARGS``; (exit code, stdout + stderr). The whole process
    group it starts is stopped if it runs past ``timeout``."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    env.pop("DS_ACCELERATOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"fedray {args[0]} ran past {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def event_files(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("events.out.tfevents.*"))


def assert_quiet(out: str, noise: tuple[str, ...]) -> None:
    shown = [n for n in noise if n in out]
    assert not shown, f"noise on the console: {shown}\n{out[-6000:]}"


@pytest.fixture(scope="module")
def obs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by this module's runs, so the last test can report on two real runs together."""
    return tmp_path_factory.mktemp("obs")


def assert_report(run_dirs: list[Path], out: Path) -> str:
    """``fedray report`` on real runs: exit 0; the HTML embeds every PNG, and each decodes."""
    from orchestrator.commands.report import main as report_main
    from tests.unit.test_report import assert_self_contained

    assert report_main([*map(str, run_dirs), "--out", str(out)]) == 0
    return assert_self_contained(out / "report.html")


def test_pretrain_console_run_log_errors_verbose_and_tensorboard(obs_dir, cache_dir):
    run_dir = obs_dir / "pre"
    base = [
        "pretrain",
        "train.log_every=1",
        "train.eval_every=2",
        "checkpoint.every_steps=1",
        f"data.cache_dir={cache_dir}",
        f"run.dir={run_dir}",
    ]

    # 1. A default run: fedray's lines only; everything else in run.log.
    rc, out = run_cli([*base, "train.max_steps=2"], timeout=400)
    assert rc == 0, out[-6000:]
    assert_quiet(out, PRETRAIN_NOISE)
    assert "(RayTrainWorker" not in out and "(TrainController" not in out
    assert f"[fedray] run {run_dir}" in out and "step      2/2" in out
    assert f"[fedray] Hugging Face export: {run_dir / 'export'}" in out
    log = (run_dir / "run.log").read_text()
    for routed in ("Requesting resources", "Setting up process group", "step      2/2"):
        assert routed in log
    tb = run_dir / "tensorboard"
    tags = scalars(tb)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in tags["train/loss"]] == [1, 2]
    assert [v for _, v in tags["train/loss"]] == pytest.approx([v for _, v in losses])
    for tag in ("train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/step_time_s"):
        assert [s for s, _ in tags[tag]] == [1, 2], tag
    assert [s for s, _ in tags["val/loss"]] == [2]
    assert [s for s, _ in tags["val/perplexity"]] == [2]
    assert "perf/mfu" not in tags  # CPU: no MFU

    # 2. Resumed, then a worker fails: the error reaches the console, the noise does not.
    rc, out = run_cli(
        [*base, "train.max_steps=4", "fault.fail_at_step=3", "fault.rank=0"], timeout=400
    )
    assert rc != 0, out[-6000:]
    assert "fedray fault injection: rank 0 fails at step 3" in out
    assert "Traceback (most recent call last)" in out
    assert_quiet(out, PRETRAIN_NOISE)
    assert [s for s, _ in scalars(tb)["train/loss"]] == [1, 2, 3]  # closed despite the failure

    # 3. --verbose, resumed again: Ray Train's lines are on the console; events appended.
    rc, out = run_cli([*base, "train.max_steps=4", "--verbose"], timeout=400)
    assert rc == 0, out[-6000:]
    assert "Setting up process group" in out and "Requesting resources" in out
    assert len(event_files(tb)) == 3  # one per run: appended, never clobbered
    tags = scalars(tb)
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in tags["val/loss"]] == [2, 4]
    log = (run_dir / "run.log").read_text()
    assert log.count("==== ") == 3 and "fedray fault injection" in log
    assert f"fedray report {run_dir}" in out  # the run's last line says how to get its report

    # 4. Its report: loss, perplexity, throughput (and lr, grad norm), over all 4 steps.
    text = assert_report([run_dir], run_dir / "report")
    assert "4 / 4 steps" in text
    assert {"loss.png", "perplexity.png", "throughput.png"} <= {
        p.name for p in (run_dir / "report").glob("*.png")
    }


def test_simulate_console_run_log_and_tensorboard(obs_dir, cache_dir):
    run_dir = obs_dir / "sim"
    rc, out = run_cli(
        [
            "simulate",
            "federation.num_rounds=1",
            "partition.max_examples_per_site=60",
            f"data.cache_dir={cache_dir}",
            f"run.dir={run_dir}",
        ],
        timeout=400,
    )
    assert rc == 0, out[-6000:]
    assert_quiet(out, SIMULATE_NOISE)
    assert "partition (natural): 4 sites" in out and "macro-F1" in out
    assert f"run directory: {run_dir}" in out
    log = (run_dir / "run.log").read_text()
    assert "Using SuperLink" in log and "macro-F1" in log
    tags = scalars(run_dir / "tensorboard")
    assert [s for s, _ in tags["eval/accuracy"]] == [0, 1]
    assert [s for s, _ in tags["site/site-0/accuracy"]] == [0, 1]
    assert [v for _, v in tags["sites/accepted"]] == [4]
    assert [s for s, _ in tags["train/loss"]] == [1]
    assert tags["comm/bytes_up"][-1][1] > 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in tags["eval/loss"]] == pytest.approx(
        [r["eval"]["eval-loss"] for r in rows]
    )
    # Every numeric round column is a scalar (time/elapsed_s was never listed by name).
    assert [s for s, _ in tags["time/elapsed_s"]] == [0, 1]

    # Its report, and (after the pretraining test) both runs in one report.
    text = assert_report([run_dir], run_dir / "report")
    assert "1 / 1 rounds" in text and "federated classification" in text
    pre = obs_dir / "pre"
    if (pre / "summary.json").is_file():
        text = assert_report([pre, run_dir], obs_dir / "both")
        assert ">pre<" in text and ">sim<" in text and "4 / 4 steps" in text
