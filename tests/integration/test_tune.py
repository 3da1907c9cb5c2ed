"""``fedray tune`` end to end, as a user runs it (the CLI in a subprocess, its own embedded Ray on
2 CPUs): a 4-trial ASHA tune of a 2-round federation with one trial made to fail, stopped by
SIGTERM and resumed; the best config re-run to the trial's metric; a short pretraining tune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FED = [
    "federation.num_rounds=2",
    "federation.eval_every=1",
    "partition.max_examples_per_site=100",
    "cluster.num_cpus=2",
]


def fedray(*args: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cached = [] if "--resume" in args else [f"data.cache_dir={cache}"]
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "tune", *args, *cached],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def rows(tune_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (tune_dir / "trials.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def federated_tune(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, dict]:
    """4 ASHA trials of a 2-round federation, the 4th pointing at a model that does not exist;
    SIGTERM once a trial has finished, then ``--resume``. Returns the tune directory and the
    metrics.jsonl bytes of the trials finished before the signal."""
    d = tmp_path_factory.mktemp("tune") / "fed"
    bad = "[demo:tweets-gpt2,demo:tweets-gpt2,demo:tweets-gpt2,/no/such/model]"
    p = fedray(
        "tune-demo", *FED, "tune.num_samples=1", "tune.grace_period=1",
        f"tune.space.model.path.grid={bad}", f"run.dir={d}", cache=cache_dir,
    )  # fmt: skip
    seen, finished = [], set()
    assert p.stdout is not None
    for line in p.stdout:  # stop once a trial has finished
        seen.append(line)
        if line.startswith("[fedray] trial ") and "macro-f1" in line:
            finished.add(line.split()[2].rstrip(":"))
            break
    p.send_signal(signal.SIGTERM)
    code, out = finish(p, timeout=120)
    text = "".join(seen) + out
    assert code == 143 and "fedray tune --resume" in out, text
    finished |= {
        ln.split()[2].rstrip(":")
        for ln in out.splitlines()
        if ln.startswith("[fedray] trial ") and "macro-f1" in ln
    }
    before = {t: (d / "trials" / t / "metrics.jsonl").read_bytes() for t in finished}
    code, out = finish(fedray("--resume", str(d), cache=cache_dir))
    assert code == 0, out
    return d, before


def test_federated_asha_tune_records_the_failure(federated_tune: tuple[Path, dict]):
    d, _ = federated_tune
    r = rows(d)
    assert len(r) == 4
    failed = [x for x in r if x["status"] == "error"]
    assert len(failed) == 1 and "/no/such/model" in failed[0]["error"]
    assert failed[0]["config"]["model.path"] == "/no/such/model"
    ok = [x for x in r if x["status"] != "error"]
    assert all(x["metric"] is not None and 1 <= x["used"] <= 2 for x in ok)
    assert {"train.lr", "strategy.name", "strategy.server_lr"} <= set(ok[0]["config"])
    summary = json.loads((d / "summary.json").read_text())
    assert summary["best"]["trial"] in {x["trial"] for x in ok}
    assert summary["status"]["error"] == 1 and summary["privacy"] is None


def test_resume_after_sigterm_runs_no_finished_trial_again(federated_tune: tuple[Path, dict]):
    d, before = federated_tune
    assert before
    for name, data in before.items():
        assert (d / "trials" / name / "metrics.jsonl").read_bytes() == data


def test_best_yaml_reruns_to_the_trials_metric(federated_tune: tuple[Path, dict]):
    """best.yaml through the loader, on the same round loop and ClientApp, same seed: the same
    macro-F1 as the trial."""
    import io

    from rich.console import Console

    from clients.client_app import app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.report import RoundTable
    from orchestrator.federated.rounds import run_federated

    d, _ = federated_tune
    best = json.loads((d / "summary.json").read_text())["best"]
    job = load_config(FederatedJob, str(d / "best.yaml"))
    grid = LocalGrid.simulated(app, job.federation.num_sites)
    quiet = RoundTable(job.task.kind, Console(file=io.StringIO()))
    res = run_federated(grid, job, d / "rerun", table=quiet)
    assert res.metric("macro-f1")[best["used"]] == pytest.approx(best["metric"], abs=1e-9)


def test_pretraining_tune(tmp_path: Path, cache_dir: Path):
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"family": "gpt2", "n_layer": 2, "n_head": 2, "d_model": 64},
                "data": {"block_size": 32, "cache_dir": str(cache_dir), "tokenizer": {"vocab_size": 512}},
                "train": {
                    "max_steps": 4, "global_batch_size": 8, "micro_batch_size": 8,
                    "warmup_steps": 1, "eval_every": 2, "log_every": 100,
                },
                "scaling": {"num_workers": 1},
                "checkpoint": {"every_steps": 4},
                "cluster": {"num_cpus": 2},
                "tune": {
                    "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                    "num_samples": 4, "grace_period": 2,
                },
            }
        )
    )  # fmt: skip
    code, out = finish(fedray(str(cfg), f"run.dir={tmp_path / 't'}", cache=cache_dir))
    assert code == 0, out
    r = rows(tmp_path / "t")
    assert len(r) == 4 and all(x["status"] in ("complete", "stopped") for x in r), r
    assert all(x["history"] and x["history"][0][0] == 2 for x in r)  # reported at every eval
    assert any(x["status"] == "complete" for x in r)
    assert (tmp_path / "t" / "best.yaml").exists()
