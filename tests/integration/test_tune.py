"""``fedray tune`` end to end, as a user runs it (the CLI in a subprocess, its own embedded Ray on
2 CPUs): a 4-trial ASHA tune of a 2-round federation with one trial made to fail, stopped by
SIGTERM and resumed; the best config re-run to the trial's metric; a 2-trial tune under central
DP with a conditional space and eval seeds; a short pretraining tune."""

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


PRESET = ROOT / "orchestrator" / "config" / "presets" / "tune-demo.yaml"
BRANCHES = {"fedadam": (1e-3, 1e-1), "fedavg": (0.3, 1.5)}


@pytest.fixture(scope="module")
def private_tune(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    """2 trials (FIFO) of a 1-round federation under central DP, with server_lr drawn from a
    range per strategy (tune.conditional), then the best config re-run on seeds 1 and 2."""
    d = tmp_path_factory.mktemp("tune") / "private"
    cfg = yaml.safe_load(PRESET.read_text())
    cfg["tune"] = {
        "space": {"strategy.name": {"choice": ["fedavg", "fedadam"]}},
        "conditional": {
            "strategy.name": {k: {"strategy.server_lr": {"loguniform": list(v)}}
                              for k, v in BRANCHES.items()},
        },
        "num_samples": 2, "scheduler": "fifo", "eval_seeds": [1, 2],
    }  # fmt: skip
    (d.parent / "private.yaml").write_text(yaml.safe_dump(cfg))
    dp = ["privacy.mode=central", "privacy.clip_norm=0.5", "privacy.noise_multiplier=1.0"]
    over = ["federation.num_rounds=1", "finetune.local_steps=1", *FED[1:], *dp]
    code, out = finish(
        fedray(str(d.parent / "private.yaml"), *over, f"run.dir={d}", cache=cache_dir)
    )
    assert code == 0, out
    return d, out


def test_private_tune_composes_the_trials_epsilons(private_tune: tuple[Path, str]):
    d, out = private_tune
    r = rows(d)
    reruns = [json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()]
    eps = [x["epsilon"] for x in r + reruns]
    assert len(eps) == 4 and all(e is not None and e > 0 for e in eps), eps
    # Epsilon depends on the noise, the sampling and the rounds, not on the tuned values.
    assert max(eps) == pytest.approx(min(eps))
    spent = json.loads((d / "summary.json").read_text())["privacy"]
    assert spent["trials"] == 4 and spent["epsilon"] == pytest.approx(sum(eps), abs=1e-3)
    assert spent["delta"] == pytest.approx(4 * 1e-5)  # basic composition: deltas add up too
    assert f"the search spent epsilon {spent['epsilon']}" in out


def test_eval_seeds_rerun_the_best_config_on_other_seeds(private_tune: tuple[Path, str]):
    import statistics

    d, out = private_tune
    summary = json.loads((d / "summary.json").read_text())
    reruns = [json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()]
    assert sorted(x["config"]["train.seed"] for x in reruns) == [1, 2]
    for x in reruns:
        job = yaml.safe_load((Path(x["run_dir"]) / "config.yaml").read_text())
        seed = x["config"]["train.seed"]
        assert job["train"]["seed"] == seed and job["federation"]["seed"] == seed  # ran on it
        assert {k: x["config"][k] for k in summary["best"]["config"]} == summary["best"]["config"]
    (seeds,) = summary["eval_seeds"]
    values = [x["metric"] for x in sorted(reruns, key=lambda x: x["config"]["train.seed"])]
    assert seeds["seeds"] == [1, 2] or seeds["seeds"] == [2, 1]
    assert sorted(seeds["values"]) == sorted(values)
    assert seeds["mean"] == pytest.approx(statistics.fmean(values))
    assert seeds["stdev"] == pytest.approx(statistics.stdev(values))
    assert f"{seeds['mean']:.4f}" in out


def test_conditional_space_draws_each_strategy_its_own_range(private_tune: tuple[Path, str]):
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob

    d, _ = private_tune
    for x in rows(d):
        lo, hi = BRANCHES[x["config"]["strategy.name"]]
        assert lo <= x["config"]["strategy.server_lr"] <= hi, x["config"]
        job = yaml.safe_load((Path(x["run_dir"]) / "config.yaml").read_text())
        assert job["strategy"]["server_lr"] == pytest.approx(x["config"]["strategy.server_lr"])
    best = json.loads((d / "summary.json").read_text())["best"]["config"]
    job = load_config(FederatedJob, str(d / "best.yaml"))  # flat and runnable
    assert (job.strategy.name, job.strategy.server_lr) == (
        best["strategy.name"], pytest.approx(best["strategy.server_lr"]),
    )  # fmt: skip


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
