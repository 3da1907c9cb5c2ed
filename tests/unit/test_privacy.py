"""Differential privacy: clipping, noise, adaptive clip, the accountant, the ledger, the config.

Pure functions and small objects only (no model, no grid); the round loop with a ledger is in
tests/integration/test_privacy_rounds.py.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event

from clients.pipeline import SiteContext, describe, update_stages
from clients.privacy import LocalDPStage
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.config.privacy import PrivacyConfig
from orchestrator.contract.model import ModelSpec
from orchestrator.contract.privacy import update_norm
from orchestrator.contract.task import SiteTask, site_task
from orchestrator.federated.ledger import (
    PrivacyLedger,
    central_epsilon,
    local_epsilon,
    projected_epsilon,
    rounds_within_budget,
)
from strategies import build_strategy
from strategies.pipeline import Aggregate, Reply
from strategies.privacy import (
    CentralDP,
    PrivacyBudgetExhausted,
    clip_to_norm,
    next_clip,
    noise_share_std,
    privatize_update,
    update_noise_multiplier,
)
from strategies.running_sum import RunningSum

DP = ["privacy.mode=central", "strategy.weighting=uniform"]


def fed_job(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, None, list(overrides), default_preset="simulate-demo")


# ---- clipping and noise ----------------------------------------------------------------------


def test_every_clipped_update_has_norm_at_most_the_clip_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scale = 10.0 ** rng.uniform(-3, 3)
        update = {
            "a": (rng.standard_normal((7, 5)) * scale).astype(np.float32),
            "b": (rng.standard_normal(13) * scale).astype(np.float32),
        }
        bound = float(10.0 ** rng.uniform(-2, 2))
        clipped, norm = clip_to_norm(update, bound)
        assert norm == pytest.approx(update_norm(update))
        assert update_norm(clipped) <= bound  # exactly, not approximately
        assert all(clipped[k].dtype == update[k].dtype for k in update)
        if norm <= bound:
            assert all(np.array_equal(clipped[k], update[k]) for k in update)
        else:  # a scaled copy: direction kept, length at the bound (to float32 rounding)
            assert update_norm(clipped) == pytest.approx(bound, rel=1e-5)
            np.testing.assert_allclose(clipped["a"] * norm / bound, update["a"], rtol=1e-4)


def test_update_norm_is_the_float64_norm_across_blocks():
    rng = np.random.default_rng(1)
    # One tensor spans several 1M-float blocks; the sum of squares must be the float64 one.
    update = {
        "big": rng.standard_normal((1 << 20) + 12_345).astype(np.float32),
        "small": rng.standard_normal((3, 4)).astype(np.float32),
    }
    ref = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values()))
    assert update_norm(update) == pytest.approx(ref, rel=1e-12)


def test_clip_refuses_a_non_finite_update():
    with pytest.raises(ValueError, match="non-finite"):
        clip_to_norm({"a": np.array([np.inf], np.float32)}, 1.0)


def test_central_noise_std_on_the_mean_is_sigma_clip_over_n():
    """K sampled sites send zero updates: the mean is pure noise of std z C / K."""
    z, clip, k, coords = 1.3, 0.7, 10, 200_000
    dp = CentralDP(clip, z, k, rng=np.random.default_rng(1))
    dp.begin_round(k)
    acc = RunningSum()
    for i in range(k):
        reply = Reply(i, f"site-{i}", {"w": np.zeros(coords, np.float32)}, weight=5.0)
        acc.fold(dp.clip_stage(reply, 1).update, 1.0)
    mean = dp.noise_stage(Aggregate(acc), 1).mean()["w"].astype(np.float64)
    expected = z * clip / k
    # std of a sample std over N draws is ~ sigma / sqrt(2N); allow 5 of those.
    assert abs(mean.std() - expected) < 5 * expected / math.sqrt(2 * coords)
    assert abs(mean.mean()) < 5 * expected / math.sqrt(coords)


def test_the_mean_divides_by_the_sampled_sites_not_the_replies():
    """A sampled site that sent nothing counts as a zero update (its absence is not a
    data-dependent denominator)."""
    dp = CentralDP(10.0, 0.0, 4, rng=np.random.default_rng(0))
    dp.begin_round(4)
    acc = RunningSum()
    for i in range(2):  # 2 of the 4 sampled replied
        acc.fold(dp.clip_stage(Reply(i, "s", {"w": np.full(3, 2.0, np.float32)}, 1.0), 1).update, 1)
    np.testing.assert_allclose(dp.noise_stage(Aggregate(acc), 1).mean()["w"], [1.0, 1.0, 1.0])


def test_local_dp_update_is_clipped_then_noised_with_std_sigma_clip():
    rng = np.random.default_rng(3)
    update = {"w": np.full(100_000, 0.05, np.float32)}  # norm 15.8 > clip 2
    private, norm = privatize_update(update, 2.0, 0.0, rng)
    assert norm == pytest.approx(0.05 * math.sqrt(100_000), rel=1e-5)
    assert update_norm(private) <= 2.0
    noisy, _ = privatize_update(update, 2.0, 1.5, rng)
    noise = noisy["w"].astype(np.float64) - private["w"]
    assert noise.std() == pytest.approx(1.5, rel=5 / math.sqrt(2 * 100_000))
    assert update["w"][0] == np.float32(0.05)  # the input is untouched


def test_distributed_noise_shares_add_up_to_the_central_noise():
    assert noise_share_std(1.0, 2.0, 4) == pytest.approx(1.0)
    shares = [noise_share_std(0.8, 1.5, 7) ** 2 for _ in range(7)]
    assert math.sqrt(sum(shares)) == pytest.approx(0.8 * 1.5)


# ---- adaptive clipping (Andrew et al. 2021) --------------------------------------------------


def test_adaptive_clip_splits_the_noise_and_moves_toward_the_quantile():
    # 1/z^2 = 1/z_delta^2 + 1/(2 sigma_b)^2
    z_delta = update_noise_multiplier(1.0, 1.0)
    assert 1 / z_delta**2 + 1 / 2.0**2 == pytest.approx(1.0)
    assert update_noise_multiplier(1.0, None) == 1.0
    with pytest.raises(ValueError, match="2 sigma_b"):
        update_noise_multiplier(2.0, 1.0)
    zero = np.random.default_rng(0)
    # every update unclipped (b = 1 > gamma = 0.5): the clip shrinks by exp(-0.2 * 0.5)
    clip, b = next_clip(1.0, 10, 10, 1e-12, 0.5, 0.2, zero)
    assert b == pytest.approx(1.0) and clip == pytest.approx(math.exp(-0.1))
    clip, b = next_clip(1.0, 0, 10, 1e-12, 0.5, 0.2, zero)  # all clipped: it grows
    assert clip == pytest.approx(math.exp(0.1))


def test_adaptive_central_dp_counts_unclipped_and_checkpoints_its_clip():
    # z = 0: no noise, so the clip's move is exact (b = 1 of 2 unclipped = gamma: no move).
    dp = CentralDP(1.0, 0.0, 2, adaptive=True, count_stddev=1e-9, rng=np.random.default_rng(0))
    dp.begin_round(2)
    acc = RunningSum()
    for i, v in enumerate([0.1, 5.0]):
        r = dp.clip_stage(Reply(i, "s", {"w": np.array([v], np.float32)}, 1.0), 1)
        acc.fold(r.update, 1.0)
    assert dp.unclipped == 1
    dp.noise_stage(Aggregate(acc), 1)
    assert dp.clip == pytest.approx(1.0, rel=1e-6)
    assert dp.round_columns() == {"clip": 1.0, "clipped": 1}
    dp.clip = 2.0  # as an adaptive move would: the record keeps the bound the round used
    assert dp.round_columns()["clip"] == 1.0
    dp.begin_round(2)
    assert dp.round_columns() == {"clip": 2.0, "clipped": 0}
    other = CentralDP(1.0, 1.0, 2, adaptive=True, count_stddev=1.0)
    other.load_state(dp.state_meta())
    assert other.clip == dp.clip
    with pytest.raises(ValueError, match="invalid DP clip"):
        other.load_state({"clip": -1.0})


# ---- the accountant --------------------------------------------------------------------------


def _rdp_poisson_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of the Poisson-subsampled Gaussian at integer order alpha (Mironov, Talwar & Zhang
    2019, Eq. (3)), written out here independently of any library."""
    terms = [
        math.lgamma(alpha + 1)
        - math.lgamma(k + 1)
        - math.lgamma(alpha - k + 1)
        + (alpha - k) * math.log1p(-q)
        + k * math.log(q)
        + (k * k - k) / (2 * sigma * sigma)
        for k in range(alpha + 1)
    ]
    m = max(terms)
    return (m + math.log(sum(math.exp(t - m) for t in terms))) / (alpha - 1)


def test_accountant_reproduces_abadi_et_al_2016_moments_accountant():
    """Abadi et al. 2016 (Deep Learning with DP, Sec. 3.1): q=0.01, sigma=4, T=10000 steps,
    delta=1e-5 gives epsilon ~= 1.26 with the moments accountant."""
    q, sigma, steps, delta = 0.01, 4.0, 10_000, 1e-5
    independent = min(
        steps * _rdp_poisson_gaussian(q, sigma, a) + math.log(1 / delta) / (a - 1)
        for a in range(2, 257)
    )
    assert round(independent, 2) == 1.26
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    library = acc.get_epsilon(delta)
    # The library converts RDP to (eps, delta) with a tighter bound than Abadi's; same RDP.
    assert 0.75 * independent < library <= independent


def test_central_epsilon_is_the_libraries_without_replacement_computation():
    z, k, n, rounds, delta = 1.5, 10, 100, 40, 1e-5
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(
        dp_event.SampledWithoutReplacementDpEvent(n, k, dp_event.GaussianDpEvent(z / 2)), rounds
    )
    assert central_epsilon(z, [(k, n)] * rounds, delta) == acc.get_epsilon(delta)
    assert central_epsilon(z, [], delta) == 0.0
    assert central_epsilon(0.0, [(k, n)], delta) == math.inf


def test_without_sampling_epsilon_is_below_the_gaussian_closed_form():
    """All sites every round: T Gaussian mechanisms of multiplier z/2 (sensitivity 2C). The
    classic RDP conversion gives eps = T r + 2 sqrt(T r log(1/delta)), r = 1/(2 (z/2)^2)."""
    z, t, delta = 4.0, 20, 1e-5
    r = 1 / (2 * (z / 2) ** 2)
    closed = t * r + 2 * math.sqrt(t * r * math.log(1 / delta))
    for eps in (central_epsilon(z, [(5, 5)] * t, delta), local_epsilon(z, t, delta)):
        assert 0.8 * closed < eps <= closed


# ---- the ledger ------------------------------------------------------------------------------


def test_ledger_budget_refuses_the_round_that_would_exceed_it():
    cfg = PrivacyConfig(mode="central", noise_multiplier=2.0, delta=1e-4)
    two = projected_epsilon(cfg, 2, 2, 4)
    cfg.target_epsilon = (two + projected_epsilon(cfg, 3, 2, 4)) / 2  # 2 rounds fit, not 3
    assert rounds_within_budget(cfg, 4, 2, 4) == 2
    ledger = PrivacyLedger.for_job(cfg)
    for rnd in (1, 2):
        ledger.admit(rnd, 2, 4)
        ledger.record(rnd, 2, 4)
    assert ledger.epsilon() == pytest.approx(two)
    with pytest.raises(PrivacyBudgetExhausted, match=r"round 3 .*target_epsilon"):
        ledger.admit(3, 2, 4)
    cols = ledger.columns()
    assert cols["epsilon"] == ledger.epsilon() and cols["privacy"]["rounds_charged"] == 2


def test_ledger_round_trips_through_json_exactly_and_refuses_another_job():
    cfg = PrivacyConfig(mode="local", noise_multiplier=3.0, delta=1e-3)
    ledger = PrivacyLedger.for_job(cfg)
    ledger.record(1, 2, 4, ["site-0", "site-1"])
    ledger.record(2, 2, 4, ["site-1", "site-2"])
    assert ledger.epsilon() == local_epsilon(3.0, 2, 1e-3)  # site-1 took part twice
    resumed = PrivacyLedger.for_job(cfg)
    resumed.load(ledger.to_json())
    assert resumed.epsilon() == ledger.epsilon() and resumed.rounds == ledger.rounds
    other = PrivacyLedger.for_job(PrivacyConfig(mode="local", noise_multiplier=1.0, delta=1e-3))
    with pytest.raises(ValueError, match="noise_multiplier"):
        other.load(ledger.to_json())
    with pytest.raises(ValueError, match="malformed"):
        resumed.load({**ledger.to_json(), "rounds": [{"round": 1}]})


# ---- config, wiring, site stage ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (
            ["privacy.mode=central", "strategy.weighting=examples"],
            "strategy.weighting",
            "num-examples",
        ),
        ([*DP, "strategy.name=median"], "strategy.name", "not a sum"),
        ([*DP, "strategy.clip_update_norm=1"], "strategy.clip_update_norm", "privacy.clip_norm"),
        ([*DP, "privacy.delta=0.3"], "privacy.delta", "1 / federation.num_sites"),
        (
            [*DP, "privacy.noise_multiplier=0", "privacy.target_epsilon=3"],
            "privacy.target_eps",
            "infinite epsilon",
        ),
        (["privacy.target_epsilon=3"], "privacy.target_epsilon", "mode=off"),
        (
            ["privacy.mode=local", "privacy.adaptive_clip=true"],
            "privacy.adaptive_clip",
            "unless privacy.mode=central",
        ),
        (["privacy.secagg_threshold=9"], "privacy.secagg_threshold", "sites per round"),
        (["privacy.clip_norm=0"], "privacy.clip_norm", "> 0"),
        ([*DP, "privacy.adaptive_clip=true"], "privacy.clipped_count_stddev", "noise"),
    ],
)
def test_settings_the_analysis_does_not_cover_are_config_errors(overrides, key, says):
    with pytest.raises(ConfigError, match=says) as e:
        fed_job(*overrides)
    assert str(e.value).startswith(key)


@pytest.mark.parametrize(
    ("overrides", "because"),
    [
        (["privacy.mode=central"], "privacy.mode=central"),
        (["privacy.mode=local", "privacy.clip_norm=0.5"], "privacy.mode=local"),
        (["privacy.secure_aggregation=true"], "privacy.secure_aggregation"),
    ],
)
def test_a_privacy_mode_alone_runs_with_the_default_weighting_resolved_to_uniform(
    overrides, because
):
    job = fed_job(*overrides)  # no strategy.weighting given: the default must not conflict
    assert job.strategy.weighting == "auto" and job.weighting == "uniform"
    strategy = build_strategy(job)
    assert strategy.fold.weighting == "uniform"
    line = f"weights: uniform (strategy.weighting=auto: uniform under {because})"
    assert line in strategy.pipeline()


def test_auto_weighting_is_by_examples_without_privacy():
    job = fed_job()
    assert job.strategy.weighting == "auto" and job.weighting == "examples"
    steps = build_strategy(job).pipeline()
    assert "weights: examples (strategy.weighting=auto: by num-examples without privacy)" in steps
    assert any("weighted mean (num-examples" in s for s in steps)


@pytest.mark.parametrize("weighting", ["examples", "capped"])
@pytest.mark.parametrize("mode", ["privacy.mode=central", "privacy.secure_aggregation=true"])
def test_an_explicit_weighting_that_conflicts_with_privacy_stays_an_error(mode, weighting):
    with pytest.raises(ConfigError, match="'uniform' or 'auto'") as e:
        fed_job(mode, f"strategy.weighting={weighting}")
    assert str(e.value).startswith(f"strategy.weighting='{weighting}' is not allowed")


def test_central_dp_strategy_pipeline_and_local_dp_site_pipeline():
    job = fed_job(*DP, "privacy.noise_multiplier=0.8", "privacy.clip_norm=0.5")
    steps = build_strategy(job).pipeline()
    assert any("central DP: clip 0.5" in s for s in steps)
    assert any("N(0, (0.8 x clip)^2), mean over sampled sites" in s for s in steps)
    assert any("uniform weights" in s for s in steps)

    local = fed_job("privacy.mode=local", "strategy.weighting=uniform", "privacy.clip_norm=0.5")
    task = site_task(local, ModelSpec(task="classification", hf_config={}), None, ["a", "b"])
    assert SiteTask.from_record(task.to_record()).privacy == local.privacy
    stages = update_stages(task, {"partition-id": 0, "num-partitions": 4})
    assert [type(s) for s in stages] == [LocalDPStage]
    assert "num-examples = 1" in describe(task)[-1]
    stage = LocalDPStage(task, rng=np.random.default_rng(0))
    out = stage({"w": np.full(4, 10.0, np.float32)}, SiteContext(task, "site-0"))
    assert out["w"].shape == (4,) and not np.allclose(out["w"], 0.25)  # clipped, then noised


def test_dry_run_prints_the_epsilon_the_configured_run_reaches():
    from orchestrator.commands.plan import privacy_plan

    job = fed_job(
        *DP,
        "federation.sites_per_round=2",
        "privacy.noise_multiplier=2.0",
        "federation.num_rounds=4",
    )
    plan = privacy_plan(job)
    assert plan["epsilon_after_all_rounds"] == projected_epsilon(job.privacy, 4, 2, 4)
    assert "2 of 4 sites per round, uniformly without replacement" in plan["sampling"]
    budget = fed_job(*DP, "privacy.target_epsilon=0.5")  # 4 of 4: no sampling, fast
    assert "budget stops the run after round 0" in privacy_plan(budget)["note"]
    assert privacy_plan(fed_job()) == {"mode": "off", "secure_aggregation": False}
