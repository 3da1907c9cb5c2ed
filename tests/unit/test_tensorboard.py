"""TensorBoard (and MLflow) tracking: record -> tags, event files read back with TensorBoard's own
reader, resume appends, a federated run on an in-process grid, MLflow's lazy import and errors."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.config import ConfigError
from orchestrator.config.schema import LoggingConfig
from orchestrator.runs import read_metrics
from orchestrator.tracking import (
    MLFLOW_RUN_ID_FILE,
    TENSORBOARD_DIR,
    MlflowLog,
    Tracker,
    check_available,
    close_round_trackers,
    note_kind,
    pretrain_scalars,
    round_scalars,
    tag_part,
)


@pytest.fixture(autouse=True)
def fresh_event_file_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event files are named ``...tfevents.<second>.<host>.<pid>.<n>`` with ``n`` a per-process
    writer counter, and TensorBoard reads a directory's files in name order. Two writers of one
    second in this long-lived test process sort wrongly once ``n`` goes from 9 to 10 (depending
    on how many writers earlier tests made); a resumed run is a new process in real use. Each
    test starts the counter at 0 so the order is the creation order."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(0))


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in ``log_dir`` (all event files), as TensorBoard would show it."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


STEP = {
    "step": 7,
    "loss": 3.5,
    "lr": 1e-3,
    "grad_norm": 0.5,
    "step_time": 0.25,
    "tokens_per_s": 4096.0,
    "time": 1.0,
    "wall_time": 1.7e9,
}


def test_pretrain_step_tags_with_and_without_optional_metrics():
    assert pretrain_scalars(STEP) == {
        "train/loss": 3.5,
        "train/lr": 1e-3,
        "train/grad_norm": 0.5,
        "perf/step_time_s": 0.25,
        "perf/tokens_per_s": 4096.0,
    }
    full = pretrain_scalars({**STEP, "mfu": 0.4, "val_loss": 2.0, "val_ppl": 7.389})
    assert full["perf/mfu"] == 0.4
    assert full["val/loss"] == 2.0 and full["val/perplexity"] == 7.389
    assert pretrain_scalars({"event": "resumed"}) == {}


ROUND = {
    "round": 3,
    "train": {
        "train-loss": 0.9,
        "sites-sampled": 4,
        "sites-accepted": 3,
        "sites-rejected": 1,
        "sites-dropped": 0,
        "bytes-received": 300,
    },
    "eval": {"eval-loss": 1.1, "accuracy": 0.6, "macro-f1": 0.5},
    "sites": {
        "site-0": {"train-loss": 0.8, "accuracy": 0.7, "aggregation": "clipped: norm 3 > 1"},
        "site-1": {"accuracy": 0.5, "aggregation": "trimmed at 10/100 coordinates"},
        "site-2": {"accuracy": 0.4, "aggregation": "discarded (Krum score 12.3)"},
        "site-3": {"rejected": "NaN in update", "aggregation": "weight capped 9 -> 3"},
        "evil/../name\n": {"accuracy": 0.1, "flag": True, "note": "text"},
    },
    "dropped": [],
    "bytes_up": 300,
    "bytes_down": 800,
    "round_time_s": 2.5,
    "epsilon": 1.25,
}


def test_round_tags_hold_global_site_traffic_and_aggregation_counts():
    tags = round_scalars(ROUND)
    assert tags["eval/loss"] == 1.1 and tags["eval/accuracy"] == 0.6
    assert tags["eval/macro-f1"] == 0.5
    assert tags["train/loss"] == 0.9
    assert (tags["sites/sampled"], tags["sites/accepted"], tags["sites/rejected"]) == (4, 3, 1)
    assert tags["sites/dropped"] == 0
    # One site each: clipped, trimmed, discarded (Krum), capped (weighting).
    assert [tags[f"sites/{k}"] for k in ("clipped", "trimmed", "discarded", "capped")] == [1] * 4
    assert (tags["comm/bytes_up"], tags["comm/bytes_down"]) == (300, 800)
    assert tags["time/round_s"] == 2.5
    assert tags["privacy/epsilon"] == 1.25
    assert tags["site/site-0/accuracy"] == 0.7 and tags["site/site-0/train-loss"] == 0.8
    # Site names are the sites' own words: made tag-safe; bools and text are not scalars.
    assert tags["site/evil_.._name_/accuracy"] == 0.1
    site_tags = [t for t in tags if t.startswith("site/")]
    assert not any(t.endswith(("/flag", "/note", "/aggregation", "/rejected")) for t in site_tags)
    assert len(site_tags) == 5


def test_round_zero_has_no_training_columns_and_epsilon_only_when_present():
    tags = round_scalars({"round": 0, "eval": {"accuracy": 0.3}, "sites": {}, "bytes_up": 0})
    assert tags == {"eval/accuracy": 0.3, "comm/bytes_up": 0.0}
    nested = round_scalars({"round": 1, "train": {}, "privacy": {"epsilon": 0.5}})
    assert nested["privacy/epsilon"] == 0.5


def test_numeric_columns_added_later_flow_through_without_changes():
    """Keys other modules add to the round record (exact wire bytes, per-site bytes, privacy,
    anything numeric) become scalars by rule; text, booleans and lists do not."""
    rec = {
        "round": 2,
        "train": {"train-loss": 0.5, "clip-fraction": 0.25},
        "eval": {"accuracy": 0.6},
        "sites": {"a": {"bytes-up": 1200, "bytes-down": 4800, "eval-examples": 30}},
        "bytes-up": 2400,
        "bytes-down": 9600,
        "elapsed_s": 12.5,
        "epsilon": 2.0,
        "noise-multiplier": 1.1,
        "privacy": {"delta": 1e-5, "accountant": "rdp", "orders": [2, 4]},
        "compression": {"ratio": {"int8": 4.0}},
        "skipped": False,
        "dropped": ["b"],
        "attack": {"kind": "scale", "sites": ["a"]},
    }
    tags = round_scalars(rec)
    assert tags["comm/bytes-up"] == 2400 and tags["comm/bytes-down"] == 9600
    assert tags["site/a/bytes-up"] == 1200 and tags["site/a/bytes-down"] == 4800
    assert tags["time/elapsed_s"] == 12.5 and tags["privacy/epsilon"] == 2.0
    assert tags["round/noise-multiplier"] == 1.1 and tags["privacy/delta"] == 1e-5
    assert tags["compression/ratio/int8"] == 4.0 and tags["train/clip-fraction"] == 0.25
    assert not any(t.startswith(("round/skipped", "round/dropped", "attack")) for t in tags)
    assert "privacy/accountant" not in tags and "round/round" not in tags


@pytest.mark.parametrize(
    ("note", "kind"),
    [
        ("clipped: norm 0.205 > 1e-06", "clipped"),
        ("clipped at distance 2.1 > 1", "clipped"),
        ("trimmed at 4/100 coordinates", "trimmed"),
        ("discarded (Krum score 3.2)", "discarded"),
        ("weight capped 9 -> 3", "capped"),
        ("", None),
        ("kept", None),
    ],
)
def test_aggregation_note_kinds(note, kind):
    assert note_kind(note) == kind


def test_tag_part_bounds_and_cleans_untrusted_names():
    assert tag_part("site-1") == "site-1"
    assert tag_part("a\x00b c/d") == "a_b c_d"
    assert len(tag_part("x" * 500)) == 64
    assert tag_part("") == "_"


def test_event_files_hold_the_steps_and_a_resume_appends(tmp_path):
    cfg = LoggingConfig()
    first = Tracker(tmp_path, cfg)
    for step in range(1, 6):
        first.log(step, {"train/loss": 10.0 - step})
    first.close()
    log_dir = tmp_path / TENSORBOARD_DIR
    assert read_scalars(log_dir) == {"train/loss": [(s, 10.0 - s) for s in range(1, 6)]}

    # Resumed from a checkpoint at step 3: steps 4-5 are run again, with other values.
    resumed = Tracker(tmp_path, cfg)
    for step in range(4, 8):
        resumed.log(step, {"train/loss": 100.0 + step})
    resumed.close()
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # appended, not clobbered
    assert read_scalars(log_dir)["train/loss"] == [
        (1, 9.0),
        (2, 8.0),
        (3, 7.0),
        (4, 104.0),  # the resumed run's values replace the ones it repeated
        (5, 105.0),
        (6, 106.0),
        (7, 107.0),
    ]


def test_tensorboard_off_writes_nothing_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        t = Tracker(tmp_path, LoggingConfig(tensorboard=False))
    assert "logging.tensorboard=false" in caplog.text
    t.log(1, {"train/loss": 1.0})
    t.close()
    assert not (tmp_path / TENSORBOARD_DIR).exists()
    assert not t.enabled


def test_logging_config_is_validated():
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.schema import PretrainJob

    for schema in (PretrainJob, FederatedJob):
        job = load_config(schema, None, ["logging.verbose=true", "logging.tensorboard=false"])
        assert job.logging.verbose and not job.logging.tensorboard
        with pytest.raises(ConfigError, match=r"logging\.mlflow_uri"):
            load_config(schema, None, ["logging.mlflow_uri=' '"])
        with pytest.raises(ConfigError, match=r"logging\.tensorbord"):
            load_config(schema, None, ["logging.tensorbord=true"])


# ---- MLflow ---------------------------------------------------------------------------------


class FakeMlflowClient:
    """The slice of ``mlflow.MlflowClient`` that MlflowLog uses, recording the calls."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.batches: list[tuple[str, list[Any]]] = []
        self.terminated: list[str] = []
        self.experiments: dict[str, str] = {}
        self.updated: list[tuple[str, str | None]] = []

    def get_experiment_by_name(self, name: str) -> Any:
        exp_id = self.experiments.get(name)
        return SimpleNamespace(experiment_id=exp_id) if exp_id else None

    def create_experiment(self, name: str) -> str:
        self.experiments[name] = f"exp-{len(self.experiments)}"
        return self.experiments[name]

    def create_run(self, experiment_id: str, run_name: str | None = None) -> Any:
        self.runs.append(f"{experiment_id}/{run_name}")
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run-{len(self.runs)}"))

    def log_batch(self, run_id: str, metrics: list[Any]) -> None:
        self.batches.append((run_id, list(metrics)))

    def set_terminated(self, run_id: str) -> None:
        self.terminated.append(run_id)

    def update_run(self, run_id: str, status: str | None = None) -> None:
        self.updated.append((run_id, status))


ENTITIES = SimpleNamespace(Metric=lambda key, value, timestamp, step: (key, value, step))


def test_mlflow_logs_the_same_scalars_and_a_resume_continues_its_run(tmp_path):
    cfg = LoggingConfig(mlflow_uri="http://mlflow.invalid:5000", mlflow_experiment="exp")
    client = FakeMlflowClient()
    t = Tracker(tmp_path, cfg, mlflow=MlflowLog(tmp_path, cfg, client, ENTITIES))
    t.log(1, {"train/loss": 2.0, "train/lr": 0.1})
    t.close()
    assert client.runs == [f"exp-0/{tmp_path.name}"]
    assert client.batches == [("run-1", [("train/loss", 2.0, 1), ("train/lr", 0.1, 1)])]
    assert client.terminated == ["run-1"]
    assert (tmp_path / MLFLOW_RUN_ID_FILE).read_text().strip() == "run-1"

    resumed = MlflowLog(tmp_path, cfg, client, ENTITIES)
    resumed.log(2, {"train/loss": 1.0})
    assert client.runs == [f"exp-0/{tmp_path.name}"]  # no second run
    assert client.updated == [("run-1", "RUNNING")]
    assert client.batches[-1] == ("run-1", [("train/loss", 1.0, 2)])


class BrokenWriter:
    def __init__(self) -> None:
        self.calls = 0

    def add_scalar(self, *a: Any, **k: Any) -> None:
        self.calls += 1
        raise OSError("No space left on device")

    def flush(self) -> None: ...

    def close(self) -> None: ...


def test_a_backend_failing_mid_run_is_turned_off_with_a_warning(tmp_path, caplog):
    cfg = LoggingConfig(mlflow_uri="http://mlflow.invalid:5000")
    client = FakeMlflowClient()
    client.log_batch = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("server gone"))
    writer = BrokenWriter()
    t = Tracker(
        tmp_path,
        cfg,
        writer_factory=lambda *a, **k: writer,
        mlflow=MlflowLog(tmp_path, cfg, client, ENTITIES),
    )
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        t.log(1, {"train/loss": 1.0})
        t.log(2, {"train/loss": 0.5})  # nothing raised; both backends are off now
    t.close()
    assert writer.calls == 1
    assert "TensorBoard logging failed (OSError: No space left on device)" in caplog.text
    assert "MLflow logging failed (ConnectionError: server gone)" in caplog.text
    assert caplog.text.count("logging failed") == 2


def test_mlflow_set_but_not_installed_is_a_config_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    cfg = LoggingConfig(mlflow_uri="http://mlflow.invalid:5000")
    with pytest.raises(ConfigError, match=r"pip install 'fedray\[mlflow\]'") as e:
        check_available(cfg)
    assert e.value.key == "logging.mlflow_uri"
    with pytest.raises(ConfigError, match="mlflow package is not installed"):
        Tracker(tmp_path, cfg)
    check_available(LoggingConfig())  # not configured: nothing to check


def test_cli_refuses_mlflow_without_the_extra_before_starting(monkeypatch, tmp_path, capsys):
    from orchestrator.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    rc = main(["pretrain", "logging.mlflow_uri=http://x:5000", f"run.dir={tmp_path / 'r'}"])
    assert rc == 2
    assert "fedray[mlflow]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


# ---- a federated run (in-process grid) ------------------------------------------------------


def test_federated_run_writes_round_events_and_a_resume_appends(cache_dir, tmp_path):
    from clients.client_app import app as client_app
    from orchestrator.federated.local_grid import LocalGrid
    from orchestrator.federated.rounds import run_federated
    from tests.unit.test_federated_rounds import job

    run_dir = tmp_path / "fed"
    sites = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    common = ["federation.num_sites=2", "federation.min_sites=2", "strategy.clip_update_norm=1e-3"]
    run_federated(
        LocalGrid(client_app, sites), job(cache_dir, *common, "federation.num_rounds=2"), run_dir
    )
    close_round_trackers()  # as when the server process ends
    tags = read_scalars(run_dir / TENSORBOARD_DIR)
    # Round 0 evaluates the starting model; rounds 1 and 2 train.
    assert [s for s, _ in tags["eval/accuracy"]] == [0, 1, 2]
    assert [s for s, _ in tags["site/site-0/accuracy"]] == [0, 1, 2]
    assert [s for s, _ in tags["site/site-1/train-loss"]] == [1, 2]
    assert [v for _, v in tags["sites/accepted"]] == [2, 2]
    assert [v for _, v in tags["sites/clipped"]] == [2, 2]  # both updates clipped every round
    assert [v for _, v in tags["sites/rejected"]] == [0, 0]
    assert all(v > 0 for _, v in tags["comm/bytes_up"][1:])
    assert {"eval/loss", "eval/macro-f1", "train/loss", "comm/bytes_down"} <= set(tags)
    rows = [r["eval"]["accuracy"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert [v for _, v in tags["eval/accuracy"]] == pytest.approx(rows)

    # Resume with one more round (a new server process): its event file is added.
    run_federated(
        LocalGrid(client_app, sites), job(cache_dir, *common, "federation.num_rounds=3"), run_dir
    )
    close_round_trackers()
    assert len(list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    tags = read_scalars(run_dir / TENSORBOARD_DIR)
    assert [s for s, _ in tags["eval/accuracy"]] == [0, 1, 2, 3]


def test_federated_run_without_tensorboard_writes_no_events(cache_dir, tmp_path):
    from orchestrator.tracking import log_round

    log_round(tmp_path, LoggingConfig(tensorboard=False), {"round": 0, "eval": {"accuracy": 1}})
    close_round_trackers()
    assert not (tmp_path / TENSORBOARD_DIR).exists()
