"""The search as Ray Tune objects: the space's domains, the searcher and the scheduler.

Nothing here searches or schedules: Ray Tune does (``BasicVariantGenerator``, ``OptunaSearch``,
``ASHAScheduler``); this module only translates ``tune.*`` into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config.loader import ConfigError
from orchestrator.tune.conditional import MARK, Conditional, branch_dicts, branch_name
from orchestrator.tune.setup import TuneSetup
from orchestrator.tune.space import Domain


def ray_domain(d: Domain, grid: bool = False) -> Any:
    """One domain as Ray Tune's; ``grid``: choices are crossed too (``tune.search=grid``)."""
    from ray import tune

    lo_hi = d.args
    if d.kind == "grid" or (grid and d.kind == "choice"):
        return tune.grid_search(list(d.args))
    if d.kind == "choice":
        return tune.choice(list(d.args))
    if d.kind == "uniform":
        return tune.uniform(*lo_hi)
    if d.kind == "loguniform":
        return tune.loguniform(*lo_hi)
    return tune.randint(lo_hi[0], lo_hi[1] + 1)  # ours includes hi, Ray's excludes it


def param_space(setup: TuneSetup) -> dict[str, Any]:
    """The space as Tune's ``param_space`` (empty for Optuna, whose space is defined by run).
    A choice with conditional keys is a nested space: a choice (or grid) over one dict per
    value, holding the value and its own domains, which Tune's variant generator resolves
    next; :func:`orchestrator.tune.conditional.trial_values` flattens it back."""
    if setup.tune.search == "optuna":
        return {}
    grid = setup.tune.search == "grid"
    out = {}
    for key, d in setup.space.items():
        if key not in setup.conditional:
            out[key] = ray_domain(d, grid)
            continue
        dicts = [
            {k: ray_domain(v) if isinstance(v, Domain) else v for k, v in b.items()}
            for b in branch_dicts(key, d, setup.conditional[key], grid)
        ]
        out[key + MARK] = ray_domain(Domain(d.kind, tuple(dicts)), grid)
    return out


@dataclass
class OptunaSpace:
    """Optuna's define-by-run space: the space's keys, then the keys hanging on the value just
    drawn, under names of their own (``key@choice=value``), so TPE models each branch apart."""

    space: dict[str, Domain]
    conditional: Conditional

    def __call__(self, trial: Any) -> None:
        for key, d in self.space.items():
            value = suggest(trial, key, d)
            for k, bd in self.conditional.get(key, {}).get(value, {}).items():
                suggest(trial, branch_name(k, key, value), bd)


def suggest(trial: Any, name: str, d: Domain) -> Any:
    """One domain drawn by an Optuna trial (``randint`` includes hi, as Optuna's does)."""
    if d.kind == "choice":
        return trial.suggest_categorical(name, list(d.args))
    if d.kind == "randint":
        return trial.suggest_int(name, *d.args)
    assert d.kind in ("uniform", "loguniform"), d  # grid is refused with optuna in load_tune
    return trial.suggest_float(name, *d.args, log=d.kind == "loguniform")


def searcher(setup: TuneSetup, max_concurrent: int | None) -> Any:
    """Seeded random/grid sampling, or Optuna's TPE (the ``tune-optuna`` extra), starting at
    most ``max_concurrent`` trials at once (None: as the resources allow). The limit is set on
    the searcher: Tune ignores ``TuneConfig.max_concurrent_trials`` next to a search generator."""
    t = setup.tune
    if t.search == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            space = OptunaSpace(setup.space, setup.conditional)
            optuna = OptunaSearch(space, metric=setup.metric, mode=setup.mode, seed=t.seed)
            return ConcurrencyLimiter(optuna, max_concurrent) if max_concurrent else optuna
        except (ImportError, AssertionError) as e:
            raise ConfigError(
                "tune.search=optuna needs Optuna: pip install 'fedray[tune-optuna]' "
                f"(or use tune.search=random) ({e})",
                "tune.search",
            ) from e
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=t.seed, max_concurrent=max_concurrent or 0)


def scheduler(setup: TuneSetup) -> Any:
    """ASHA counting rounds (federated) or steps (pretraining), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = setup.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=setup.time_attr,
        max_t=setup.max_t,
        grace_period=min(t.grace_period, setup.max_t),
        reduction_factor=t.reduction_factor,
    )


__all__ = ["OptunaSpace", "param_space", "ray_domain", "scheduler", "searcher", "suggest"]
