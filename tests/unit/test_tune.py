"""``fedray tune`` without Ray: the space parsed and every error case, the job kind and metric
defaults, best.yaml through the loader, the trial rows and table, the privacy spend."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from orchestrator.config import ConfigError, load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.config.schema import PretrainJob
from orchestrator.tune import results
from orchestrator.tune.setup import dry_run_plan, load_tune
from orchestrator.tune.space import Domain, flatten
from orchestrator.tune.trials import round_metrics


def tune_yaml(tmp_path: Path, body: dict) -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


FED = {"federation": {"num_sites": 4, "num_rounds": 3}, "task": {"kind": "classification"}}
PRE = {"scaling": {"num_workers": 1}, "train": {"max_steps": 10, "global_batch_size": 8}}


def test_space_parsed_nested_and_dotted():
    assert flatten({"train": {"lr": {"uniform": [0, 1]}}, "strategy.name": {"choice": ["a"]}}) == {
        "train.lr": {"uniform": [0, 1]},
        "strategy.name": {"choice": ["a"]},
    }
    s = load_tune(
        "tune-demo",
        [
            "tune.space.finetune.local_steps.randint=[1,10]",
            "tune.space.strategy.name.grid=[fedavg]",
        ],
    )
    assert s.kind == "federated" and (s.metric, s.mode) == ("macro-f1", "max")
    assert s.space["finetune.local_steps"] == Domain("randint", (1, 10))
    assert s.space["train.lr"] == Domain("loguniform", (1e-4, 1e-2))
    assert s.space["strategy.name"] == Domain("grid", ("fedavg",))
    assert s.job({"train.lr": 0.003, "finetune.local_steps": 7}).finetune.local_steps == 7


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("tune.space.train.lrr.uniform=[0.1,1]", "tune.space.train.lrr", "no setting"),
        ("tune.space.strategy.choice=[fedavg]", "tune.space.strategy", "is a section"),
        ("tune.space.train.lr.choice=[fast,slow]", "tune.space.train.lr", "'fast'"),
        ("tune.space.train.lr.uniform=[0.1,0.01]", "tune.space.train.lr", "lo < hi"),
        ("tune.space.train.lr.loguniform=[0.01,0.01]", "tune.space.train.lr", "lo < hi"),
        (
            "tune.space.finetune.local_steps.randint=[5,5]",
            "tune.space.finetune.local_steps",
            "lo < hi",
        ),
        (
            "tune.space.finetune.local_steps.uniform=[1,5]",
            "tune.space.finetune.local_steps",
            "randint",
        ),
        ("tune.space.strategy.name.uniform=[1,5]", "tune.space.strategy.name", "choice"),
        ("tune.space.strategy.name.choice=[fedavg,fedfoo]", "tune.space.strategy.name", "fedfoo"),
        ("tune.space.train.lr.uniform=[0,0.1]", "tune.space.train.lr", "refused by the job"),
        ("tune.space.train.lr.loguniform=[-1,0.1]", "tune.space.train.lr", "lo > 0"),
        ("tune.space.train.lr.uniform=[0.1]", "tune.space.train.lr", "[lo, hi]"),
        ("tune.space.train.lr.normal=[0,1]", "tune.space.train.lr.normal", "no setting"),
        ("tune.space.train.lr.choice=[]", "tune.space.train.lr", "non-empty"),
    ],
)
def test_space_errors_name_the_key(override: str, key: str, says: str):
    with pytest.raises(ConfigError) as e:
        load_tune("tune-demo", [override])
    assert e.value.key == key and str(e.value).startswith(key + ":")
    assert says in str(e.value)


def test_search_metric_and_kind_errors(tmp_path: Path):
    cases = {
        "tune.search": ["tune.search=grid"],  # tune-demo has loguniform domains
        "tune.metric": ["tune.metric=val_loss"],  # a federation reports no val_loss
        "tune.scheduler": ["tune.scheduler=hyperband"],
        "tune.num_samples": ["tune.num_samples=0"],
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError) as e:
            load_tune("tune-demo", overrides)
        assert key in str(e.value), (key, str(e.value))
    with pytest.raises(ConfigError, match="pretraining or a federated"):
        load_tune(tune_yaml(tmp_path, {"model": {}, "tune": {"space": {}}}))
    with pytest.raises(ConfigError, match=r"tune\.space is empty"):
        load_tune(tune_yaml(tmp_path, {**FED, "tune": {"space": {}}}))
    with pytest.raises(ConfigError, match="needs a config"):
        load_tune(None)


def test_kind_and_metric_defaults(tmp_path: Path):
    space = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    pre = load_tune(tune_yaml(tmp_path, {**PRE, "tune": space}))
    assert (pre.kind, pre.metric, pre.mode, pre.time_attr, pre.max_t) == (
        "pretrain", "val_loss", "min", "step", 10,
    )  # fmt: skip
    assert pre.cpus_per_trial() == 0.0 and pre.worker_cpus() == 1.0
    assert pre.max_concurrent(total_cpus=3) == 3
    lm = load_tune(tune_yaml(tmp_path, {**FED, "task": {"kind": "causal_lm"}, "tune": space}))
    assert (lm.metric, lm.mode, lm.time_attr) == ("perplexity", "min", "round")
    acc = load_tune(tune_yaml(tmp_path, {**FED, "tune": {**space, "metric": "accuracy"}}))
    assert acc.mode == "max" and acc.max_concurrent(8) is None
    plan = dry_run_plan(acc, tmp_path / "t")
    assert plan["tune"]["space"] == {"train.lr": {"loguniform": [1e-4, 1e-2]}}


def row(trial: str, metric: float | None, used: int = 3, **kw) -> results.TrialRow:
    status = kw.pop("status", "complete" if used == 3 else "stopped")
    return results.TrialRow(trial, {"train.lr": 0.1}, metric, used, status, **kw)


def test_trial_row_from_records():
    recs = [
        {"round": 0, "eval": {"macro-f1": 0.1}},
        {"round": 1, "eval": {}},
        {"round": 2, "eval": {"macro-f1": 0.5}, "epsilon": 1.5},
    ]
    r = results.trial_row("t1", {}, recs, metric="macro-f1", time_attr="round", max_t=3)
    assert (r.metric, r.used, r.status, r.epsilon, r.history) == (
        0.5,
        2,
        "stopped",
        1.5,
        [(2, 0.5)],
    )
    err = results.trial_row("t2", {}, [], metric="x", time_attr="step", max_t=3, error="boom")
    assert (err.status, err.metric, err.used) == ("error", None, 0)
    steps = [
        {"step": 2, "loss": 3.0, "val_loss": 2.5},
        {"step": 3, "loss": 2.5, "val_loss": float("nan")},  # a checkpoint-only report
        {"step": 4, "loss": 2.0, "val_loss": 2.0},
    ]
    p = results.trial_row("t3", {}, steps, metric="val_loss", time_attr="step", max_t=4)
    assert (p.metric, p.status, p.history) == (2.0, "complete", [(2, 2.5), (4, 2.0)])


def test_best_prefers_finished_trials_and_table_marks_it():
    rows = [row("a", 0.5), row("b", 0.9, used=1), row("c", 0.7), row("d", None, status="error")]
    best = results.best_row(rows, "max")
    assert best is not None and best.trial == "c"  # b was stopped early: not comparable
    assert results.best_row(rows, "min").trial == "a"
    assert [r.trial for r in results.top_configs(rows, "max", 2)] == ["c", "a"]
    assert results.best_row([row("d", None, status="error")], "max") is None
    out = io.StringIO()
    results.print_table(
        Console(file=out, width=200), rows, ["train.lr"], "macro-f1", "rounds", best
    )
    lines = out.getvalue().splitlines()
    assert any(ln.lstrip().startswith("* c") for ln in lines)
    assert sum("*" in ln for ln in lines) == 1 and "error" in out.getvalue()


def test_rows_round_trip_and_privacy_composes(tmp_path: Path):
    rows = [row("a", 0.5, epsilon=2.0), row("b", 0.6, epsilon=3.5), row("c", 0.1)]
    results.write_rows(tmp_path / "trials.jsonl", rows)
    assert results.read_rows(tmp_path / "trials.jsonl") == rows
    spent = results.privacy_spent(rows, delta=1e-5)
    assert spent == {
        "epsilon": 5.5, "delta": 2e-5, "trials": 2, "composition": "basic (sum over trials)",
    }  # fmt: skip
    assert results.privacy_spent([row("c", 0.1)], 1e-5) is None


def test_seed_summary_groups_by_tuned_keys():
    rows = [
        results.TrialRow("a", {"train.lr": 0.1, "train.seed": 1}, 0.5, 3, "complete"),
        results.TrialRow("b", {"train.lr": 0.1, "train.seed": 2}, 0.7, 3, "complete"),
        results.TrialRow("c", {"train.lr": 0.2, "train.seed": 1}, 0.4, 3, "complete"),
    ]
    s = results.seed_summary(rows, ["train.lr"])
    assert s[0]["config"] == {"train.lr": 0.1} and s[0]["seeds"] == [1, 2]
    assert s[0]["mean"] == pytest.approx(0.6) and s[0]["stdev"] == pytest.approx(0.1414, abs=1e-3)
    assert s[1]["stdev"] == 0.0


def test_round_metrics_skip_round_zero_and_unevaluated():
    assert round_metrics({"round": 0, "eval": {"macro-f1": 0.3}}, "macro-f1") is None
    assert round_metrics({"round": 2, "eval": {}}, "macro-f1") is None
    assert round_metrics({"round": 2, "eval": {"macro-f1": 0.3}, "epsilon": 1.0}, "macro-f1") == {
        "macro-f1": 0.3, "round": 2, "epsilon": 1.0,
    }  # fmt: skip


def test_best_yaml_round_trips_through_the_loader(tmp_path: Path):
    from orchestrator.tune.runner import write_best

    s = load_tune("tune-demo", ["run.dir=/somewhere/tune-x"])
    best = row("t7", 0.61)
    best.config = {"train.lr": 0.0042, "strategy.name": "fedadam", "strategy.server_lr": 0.05}
    path = write_best(s, best, tmp_path)
    job = load_config(FederatedJob, str(path))
    assert job.train.lr == 0.0042 and job.strategy.name == "fedadam"
    assert job.strategy.server_lr == 0.05 and job.run.dir is None and job.run.name is None
    assert job.federation.num_rounds == s.tune_job.federation.num_rounds
    assert "fedray simulate" in path.read_text().splitlines()[1]
    pre = load_tune(
        tune_yaml(tmp_path, {**PRE, "tune": {"space": {"train.lr": {"uniform": [0.001, 0.01]}}}})
    )
    best.config = {"train.lr": 0.005}
    job = load_config(PretrainJob, str(write_best(pre, best, tmp_path)))
    assert job.train.lr == 0.005 and job.train.max_steps == 10


def test_submit_takes_a_tune_config(tmp_path: Path, capsys):
    from orchestrator.cli import main
    from orchestrator.submit import build_submission, prepare_job

    assert main(["submit", "tune-demo", "tune.num_samples=3", "--print-config"]) == 0
    assert "num_samples: 3" in capsys.readouterr().out
    assert main(["submit", "tune-demo", "tune.space.train.nope.choice=[1]", "--print-config"]) == 2
    job = load_tune("tune-demo", ["run.root=/shared/runs", "data.cache_dir=/shared/c"]).tune_job
    sub = build_submission(prepare_job(job, "tune"), tmp_path, ship_code=False, command="tune")
    assert sub.entrypoint == "python -m orchestrator.cli tune config.yaml"
    assert sub.metadata["fedray_run_dir"].startswith("/shared/runs/tune-")
    assert "tune:" in (tmp_path / "config.yaml").read_text() and job.cluster.address == "auto"


def test_report_on_a_tune_directory(tmp_path: Path):
    from orchestrator.report import build_report

    d = tmp_path / "tune-x"
    d.mkdir()
    (d / "tune.yaml").write_text("tune: {}\n")
    rows = [
        results.TrialRow("a", {"train.lr": 0.001, "strategy.name": "fedavg"}, 0.5, 2, "complete",
                         history=[(1, 0.4), (2, 0.5)]),
        results.TrialRow("b", {"train.lr": 0.05, "strategy.name": "fedadam"}, 0.3, 1, "stopped",
                         history=[(1, 0.3)]),
        results.TrialRow("c", {"train.lr": 0.01, "strategy.name": "fedadam"}, None, 0, "error",
                         error="boom"),
    ]  # fmt: skip
    results.write_rows(d / "trials.jsonl", rows)
    (d / "summary.json").write_text(
        '{"job": "federated", "metric": "macro-f1", "best": {"trial": "a"}}'
    )
    rep = build_report([d])
    names = sorted(p.name for p in rep.pngs)
    assert names == ["key-strategy_name.png", "key-train_lr.png", "trials.png"]
    page = rep.html.read_text()
    assert rep.html == d / "report" / "report.html" and "boom" in page
    assert '<tr style="font-weight:bold"><td>a</td>' in page
