"""The federated job config: preset, overrides, validation with key paths, CLI exit codes."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.config import ConfigError, load_config
from orchestrator.config.federated import FederatedJob


def load(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, None, list(overrides), default_preset="simulate-demo")


def test_preset_and_overrides():
    job = load("strategy.name=fedadam", "federation.num_sites=6", "partition.kind=dirichlet")
    assert job.task.kind == "classification"
    assert job.strategy.eta == 0.01  # adaptive default server lr
    assert load().strategy.eta == 1.0
    assert job.federation.num_sites == 6 and job.partition.kind == "dirichlet"
    assert job.model.family == "gpt2" and job.train.micro_batch_size == 32  # shared sections


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.name=fedsgd", "strategy.name"),
        ("strategy.accumulate=float16", "strategy.accumulate"),
        ("task.kind=regression", "task.kind"),
        ("finetune.mode=qlora", "finetune.mode"),
        ("federation.min_sites=9", "federation.min_sites"),
        ("federation.sites_per_round=9", "federation.sites_per_round"),
        ("partition.alpha=0", "partition.alpha"),
        ("partition.eval_fraction=1.5", "partition.eval_fraction"),
        ("data.paths=[a.csv,b.csv]", "data.paths"),
        ("federation.bogus=1", "federation.bogus"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load(override)
    assert key in str(e.value)


def test_cli_print_config_dry_run_and_exit_code(capsys):
    assert main(["simulate", "--print-config"]) == 0
    assert "strategy:" in capsys.readouterr().out
    assert main(["simulate", "federation.num_sites=3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"num_supernodes": 3' in out and '"partition"' in out
    assert main(["simulate", "strategy.name=nope"]) == 2


def test_dry_run_shows_the_round_pipeline_of_both_sides(capsys):
    import json

    from orchestrator.cli import main

    args = ["strategy.name=trimmed_mean", "strategy.clip_update_norm=2", "attack.kind=sign_flip"]
    assert main(["simulate", *args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out.split("# launch plan\n", 1)[1])
    site, server = plan["round_pipeline"]["site"], plan["round_pipeline"]["server"]
    assert site[0].startswith("train: AdamW") and any("attack: sign_flip" in s for s in site)
    assert any(s.startswith("fold: clip update norms to 2") and "trimmed mean" in s for s in server)
    assert server[-2].startswith("server step")


def test_dry_run_under_secure_aggregation_states_the_weights_and_the_tolerance():
    from orchestrator.commands.plan import round_pipeline
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config

    job = load_config(
        FederatedJob, None, ["privacy.secure_aggregation=true", "federation.num_sites=4"]
    )
    server = round_pipeline(job)["server"]
    assert server[0].startswith("secure aggregation: 4 site(s)")
    assert any(s.startswith("weights: uniform (strategy.weighting=auto") for s in server)
    assert any(s.startswith("robustness: tolerates 0 attacker(s)") for s in server)
    assert server[-2].startswith("server step")
