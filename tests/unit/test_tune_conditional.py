"""``tune.conditional`` without Ray: the branches parsed (dotted, nested and from the command
line), every error naming its key, the Optuna define-by-run space drawing each branch's own
range, a trial's drawn config flattened back into the job's keys."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import ConfigError
from orchestrator.tune.conditional import branch_dicts, trial_values
from orchestrator.tune.setup import dry_run_plan, load_tune
from orchestrator.tune.space import Domain

BASE = {
    "task": {"kind": "classification"},
    "federation": {"num_sites": 4, "num_rounds": 3},
    "tune": {
        "space": {
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "strategy.name": {"choice": ["fedavg", "fedavgm", "fedadam"]},
        },
        "conditional": {
            "strategy.name": {
                "fedadam": {"strategy.server_lr": {"loguniform": [1e-3, 1e-1]}},
                "fedavg": {"strategy": {"server_lr": {"loguniform": [0.3, 1.5]}}},
            }
        },
    },
}


def write(tmp_path: Path, body: dict) -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def with_branches(branches: dict, **tune: object) -> dict:
    body = copy.deepcopy(BASE)
    body["tune"]["conditional"] = branches
    body["tune"].update(tune)
    return body


def test_branches_parsed_merged_and_shown(tmp_path: Path):
    s = load_tune(
        write(tmp_path, BASE),
        ["tune.conditional.strategy.name.fedavgm.finetune.local_steps.randint=[2,4]"],
    )
    assert s.conditional == {
        "strategy.name": {
            "fedadam": {"strategy.server_lr": Domain("loguniform", (1e-3, 1e-1))},
            "fedavg": {"strategy.server_lr": Domain("loguniform", (0.3, 1.5))},
            "fedavgm": {"finetune.local_steps": Domain("randint", (2, 4))},
        }
    }
    assert s.keys == [
        "train.lr", "strategy.name", "strategy.server_lr", "finetune.local_steps",
    ]  # fmt: skip
    shown = dry_run_plan(s, tmp_path / "t")["tune"]["conditional"]
    assert shown["strategy.name"]["fedadam"] == {"strategy.server_lr": {"loguniform": [1e-3, 0.1]}}
    assert "conditional" not in dry_run_plan(load_tune("tune-demo"), tmp_path)["tune"]


@pytest.mark.parametrize(
    ("branches", "key", "says"),
    [
        ({"train.lrr": {"x": {}}}, "tune.conditional.train.lrr", "not a key of tune.space"),
        ({"train.lr": {"0.001": {}}}, "tune.conditional.train.lr", "choice or grid"),
        ({"strategy.name": 3}, "tune.conditional.strategy.name", "expected value"),
        (
            {"strategy.name": {"fedyogi": {"strategy.server_lr": {"uniform": [0.1, 1]}}}},
            "tune.conditional.strategy.name.fedyogi",
            "not one of",
        ),
        (
            {"strategy.name": {"fedadam": {"strategy.server_lrr": {"uniform": [0.1, 1]}}}},
            "tune.conditional.strategy.name.fedadam.strategy.server_lrr",
            "no setting",
        ),
        (
            {"strategy.name": {"fedadam": {"strategy": {"uniform": [0.1, 1]}}}},
            "tune.conditional.strategy.name.fedadam.strategy",
            "is a section",
        ),
        (
            {"strategy.name": {"fedadam": {"finetune.local_steps": {"uniform": [1, 5]}}}},
            "tune.conditional.strategy.name.fedadam.finetune.local_steps",
            "use randint",
        ),
        (
            {"strategy.name": {"fedadam": {"strategy.server_lr": {"choice": ["fast"]}}}},
            "tune.conditional.strategy.name.fedadam.strategy.server_lr",
            "'fast'",
        ),
        (
            {"strategy.name": {"fedadam": {"strategy.server_lr": {"loguniform": [0.1, 0.01]}}}},
            "tune.conditional.strategy.name.fedadam.strategy.server_lr",
            "lo < hi",
        ),
        (
            {"strategy.name": {"fedavg": {"strategy.server_lr": {"uniform": [0, 1]}}}},
            "tune.conditional.strategy.name.fedavg.strategy.server_lr",
            "refused by the job",
        ),
        (
            {"strategy.name": {"fedadam": {"strategy.server_lr": {"normal": [0, 1]}}}},
            "tune.conditional.strategy.name.fedadam.strategy.server_lr.normal",
            "no setting",
        ),
        (
            {"strategy.name": {"fedadam": {"train.lr": {"uniform": [0.1, 1]}}}},
            "tune.conditional.strategy.name.fedadam.train.lr",
            "drawn by tune.space",
        ),
        ({"strategy.name": {"fedadam": {}}}, "tune.conditional.strategy.name.fedadam", "expected"),
    ],
)
def test_conditional_errors_name_the_key(tmp_path: Path, branches: dict, key: str, says: str):
    with pytest.raises(ConfigError) as e:
        load_tune(write(tmp_path, with_branches(branches)))
    assert e.value.key == key and str(e.value).startswith(key + ":"), str(e.value)
    assert says in str(e.value)


def test_a_key_hangs_on_one_choice_and_grid_search_draws_no_ranges(tmp_path: Path):
    body = with_branches(
        {
            "strategy.name": {"fedadam": {"train.weight_decay": {"choice": [0.0, 0.1]}}},
            "finetune.local_steps": {"2": {"train.weight_decay": {"choice": [0.0]}}},
        }
    )
    body["tune"]["space"]["finetune.local_steps"] = {"choice": [2, 5]}
    with pytest.raises(ConfigError) as e:
        load_tune(write(tmp_path, body))
    assert e.value.key == "tune.conditional.finetune.local_steps.2.train.weight_decay"
    assert "already hangs on tune.space.strategy.name" in str(e.value)
    body = with_branches(BASE["tune"]["conditional"], search="grid")
    body["tune"]["space"].pop("train.lr")
    with pytest.raises(ConfigError) as e:
        load_tune(write(tmp_path, body))
    assert e.value.key == "tune.search" and "tune.conditional.strategy.name" in str(e.value)
    grid = {"strategy.name": {"fedadam": {"strategy.server_lr": {"grid": [0.01, 0.1]}}}}
    body["tune"]["conditional"] = grid
    assert load_tune(write(tmp_path, body)).conditional["strategy.name"]["fedadam"]


def test_cli_refuses_a_bad_branch_before_anything_starts(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = "tune.conditional.strategy.name.fedadam.strategy.server_lr.loguniform=[0.1,0.01]"
    assert main(["tune", write(tmp_path, BASE), bad]) == 2
    err = capsys.readouterr().err
    assert "tune.conditional.strategy.name.fedadam.strategy.server_lr" in err and "lo < hi" in err
    assert not (tmp_path / "runs").exists()


def test_trial_values_flatten_both_searchers_draws():
    branch = {"strategy.name": "fedadam", "strategy.server_lr@strategy.name=fedadam": 0.02}
    random = {"train.lr": 0.01, "strategy.name@": branch}
    assert trial_values(random) == {
        "train.lr": 0.01, "strategy.name": "fedadam", "strategy.server_lr": 0.02,
    }  # fmt: skip
    optuna = {"strategy.name": "fedavg", "strategy.server_lr@strategy.name=fedavg": 0.9}
    assert trial_values(optuna) == {"strategy.name": "fedavg", "strategy.server_lr": 0.9}


def test_branches_are_crossed_with_their_own_grid_points(tmp_path: Path):
    """Grid search: one dict per value and combination of its own points, each branch's keys
    named apart (Tune refuses one path resolved to two values across grid points)."""
    body = with_branches(
        {
            "strategy.name": {
                "fedadam": {"strategy.server_lr": {"grid": [0.01, 0.1]}},
                "fedavg": {"strategy.server_lr": {"choice": [0.5, 1.0]}},
            }
        },
        search="grid",
    )
    body["tune"]["space"].pop("train.lr")
    s = load_tune(write(tmp_path, body))
    d = s.space["strategy.name"]
    dicts = branch_dicts("strategy.name", d, s.conditional["strategy.name"], grid_search=True)
    assert [trial_values(b) for b in dicts] == [
        {"strategy.name": "fedavg", "strategy.server_lr": 0.5},
        {"strategy.name": "fedavg", "strategy.server_lr": 1.0},
        {"strategy.name": "fedavgm"},
        {"strategy.name": "fedadam", "strategy.server_lr": 0.01},
        {"strategy.name": "fedadam", "strategy.server_lr": 0.1},
    ]
    assert "strategy.server_lr@strategy.name=fedadam" in dicts[-1]
    # Random search: choice domains stay to be drawn, grid ones need their choice key crossed.
    rand = branch_dicts("strategy.name", d, s.conditional["strategy.name"], grid_search=False)
    assert len(rand) == 4 and rand[0]["strategy.server_lr@strategy.name=fedavg"] == Domain(
        "choice", (0.5, 1.0)
    )
    body["tune"]["search"] = "random"
    with pytest.raises(ConfigError) as e:
        load_tune(write(tmp_path, body))
    assert e.value.key == "tune.conditional.strategy.name.fedadam.strategy.server_lr"
    assert "crossed" in str(e.value)
    body["tune"]["space"]["strategy.name"] = {"grid": ["fedavg", "fedavgm", "fedadam"]}
    assert load_tune(write(tmp_path, body)).conditional


def test_optuna_draws_each_branch_in_its_own_range(tmp_path: Path):
    optuna = pytest.importorskip("optuna")
    from orchestrator.tune.search import OptunaSpace

    s = load_tune(write(tmp_path, BASE))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = OptunaSpace(s.space, s.conditional)
    drawn = []
    for _ in range(12):
        trial = study.ask()
        space(trial)
        drawn.append(trial_values(trial.params))
        study.tell(trial, 0.5)
    ranges = {"fedadam": (1e-3, 1e-1), "fedavg": (0.3, 1.5)}
    assert {d["strategy.name"] for d in drawn} == {"fedavg", "fedavgm", "fedadam"}
    for d in drawn:
        lo, hi = ranges.get(d["strategy.name"], (None, None))
        if lo is None:
            assert "strategy.server_lr" not in d  # fedavgm keeps the job's own
        else:
            assert lo <= d["strategy.server_lr"] <= hi
        s.job(d)  # every draw is a valid job
