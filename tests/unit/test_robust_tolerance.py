"""One setting, ``strategy.num_byzantine``, sets how many attackers every rule tolerates
(orchestrator/config/robust.py): hand-worked tolerances, the config errors, the dry-run line,
and a trimmed mean under num_byzantine=2 of 8 worked out by hand."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from orchestrator.config.federated import STRATEGIES as CONFIG_NAMES
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, load_config
from orchestrator.config.robust import ROBUST_RULES, tolerated, trim_per_side
from orchestrator.contract.arrays import from_numpy, to_numpy
from strategies import STRATEGIES, RobustStrategy, build_strategy
from tests.unit.test_robust_strategies import reply, run_notes

EIGHT = ("federation.num_sites=8", "federation.sites_per_round=8", "federation.min_sites=1")


@functools.cache
def job_for(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, None, [*EIGHT, *overrides], "simulate-demo")


def strategy(tmp_path, *overrides: str):
    job = copy.deepcopy(job_for(*overrides))
    s = build_strategy(job, update_keys=["w"], work_dir=tmp_path / "replies")
    s._global = to_numpy(from_numpy({"w": np.zeros(2, np.float32)}))
    return s


def test_trimmed_mean_with_two_declared_attackers_of_eight_trims_two_per_side(tmp_path):
    # 6 honest sites send 1..6; sites 7 and 8 flip and scale theirs (-5 x 7, -5 x 8).
    # Per coordinate, sorted: -40, -35, 1, 2, 3, 4, 5, 6. Dropping 2 per side leaves 1..6 minus
    # the two largest honest values: (1 + 2 + 3 + 4) / 4 = 2.5. Trimming one per side (the old
    # 0.2 x 8 = 1.6 -> 1) would have kept -35: (-35 + 1 + 2 + 3 + 4 + 5) / 6 = -3.33.
    s = strategy(tmp_path, "strategy.name=trimmed_mean", "strategy.num_byzantine=2")
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -35.0, -40.0]
    out, notes = run_notes(s, [reply([v, v], 10, f"site-{i}") for i, v in enumerate(values, 1)])
    np.testing.assert_allclose(out, [2.5, 2.5], rtol=1e-6)
    assert {"site-7", "site-8", "site-5", "site-6"} == set(notes)


def test_trim_fraction_is_an_override_that_may_trim_more():
    # floor(0.3 x 8 + 1e-9) = 2 >= num_byzantine 1: two per side.
    assert trim_per_side(8, 1, 0.3) == 2
    assert trim_per_side(8, 2, None) == 2
    assert trim_per_side(4, 3, None) == 1  # never more than (K - 1) // 2
    assert trim_per_side(100, 0, 0.29) == 29  # 0.29 x 100 = 28.999999999999996 in binary


@pytest.mark.parametrize(
    ("overrides", "k", "expected"),
    [
        # median / centered_clip: an honest majority, (K - 1) // 2
        (dict(name="median"), 8, 3),
        (dict(name="median"), 7, 3),
        (dict(name="centered_clip"), 5, 2),
        # trimmed_mean: b = num_byzantine per side (null = 1)
        (dict(name="trimmed_mean", num_byzantine=2), 8, 2),
        (dict(name="trimmed_mean"), 8, 1),
        (dict(name="trimmed_mean", num_byzantine=1, trim_fraction=0.25), 8, 2),
        # krum: f itself when K > 2f + 2, else nothing
        (dict(name="krum", num_byzantine=2), 7, 2),
        (dict(name="krum", num_byzantine=2), 6, 0),
        # a weighted mean tolerates none
        (dict(name="fedavg"), 8, 0),
    ],
)
def test_tolerated_by_hand(overrides, k, expected):
    from orchestrator.config.federated import StrategyConfig

    assert tolerated(StrategyConfig(**overrides), k) == expected


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        # trim 0.2 x 8 = 1 per side < 2 declared
        (
            [
                "strategy.name=trimmed_mean",
                "strategy.num_byzantine=2",
                "strategy.trim_fraction=0.2",
            ],
            "strategy.trim_fraction",
            ">= num_byzantine / sites per round = 2/8",
        ),
        # Krum: 8 sites tolerate at most (8 - 3) // 2 = 2
        (["strategy.name=krum", "strategy.num_byzantine=3"], "strategy.num_byzantine", "<= 2"),
        # median: 8 sites tolerate at most 3 (an honest majority)
        (["strategy.name=median", "strategy.num_byzantine=4"], "strategy.num_byzantine", "<= 3"),
        # a weighted mean tolerates none
        (
            ["strategy.name=fedavg", "strategy.num_byzantine=1"],
            "strategy.num_byzantine",
            "0 or null",
        ),
        (
            ["strategy.name=multikrum", "strategy.num_byzantine=2", "strategy.num_selected=7"],
            "strategy.num_selected",
            "<= sites per round - num_byzantine = 8 - 2 = 6",
        ),
    ],
)
def test_a_rule_that_tolerates_fewer_than_declared_is_a_config_error(overrides, key, says):
    with pytest.raises(ConfigError) as e:
        load_config(FederatedJob, None, [*EIGHT, *overrides], "simulate-demo")
    assert key in str(e.value) and says in str(e.value)


def test_the_error_names_the_key_the_value_what_is_allowed_and_the_fix():
    with pytest.raises(ConfigError) as e:
        load_config(
            FederatedJob,
            None,
            [*EIGHT, "strategy.name=krum", "strategy.num_byzantine=3"],
            "simulate-demo",
        )
    msg = str(e.value)
    assert msg.startswith("strategy.num_byzantine=3 is not allowed: expected <= 2 with 8 sites")
    assert "Sample at least 9 sites per round" in msg and "lower strategy.num_byzantine to 2" in msg


def test_dry_run_states_what_the_rule_tolerates_of_the_sampled_sites():
    steps = build_strategy(
        job_for("strategy.name=trimmed_mean", "strategy.num_byzantine=2")
    ).pipeline()
    line = next(s for s in steps if s.startswith("robustness: "))
    assert "tolerates 2 attacker(s) of 8 sampled sites, 2 declared" in line
    assert "drops 2 value(s) per side" in line
    fedavg = build_strategy(job_for()).pipeline()
    assert any("tolerates 0 attacker(s) of 8 sampled sites" in s for s in fedavg)


def test_one_registry_names_every_configurable_strategy_and_the_robust_list_once():
    assert set(STRATEGIES) == set(CONFIG_NAMES)
    robust = {n for n, cls in STRATEGIES.items() if issubclass(cls, RobustStrategy)}
    assert robust == set(ROBUST_RULES)
    for name, cls in STRATEGIES.items():
        overrides = [f"strategy.name={name}"]
        assert type(build_strategy(job_for(*overrides))) is cls
