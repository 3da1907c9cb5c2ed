"""The search as Ray Tune objects: the space's domains, the searcher and the scheduler.

Nothing here searches or schedules: Ray Tune does (``BasicVariantGenerator``, ``OptunaSearch``,
``ASHAScheduler``); this module only translates ``tune.*`` into them.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.loader import ConfigError
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
    grid = setup.tune.search == "grid"
    return {k: ray_domain(d, grid) for k, d in setup.space.items()}


def searcher(setup: TuneSetup, max_concurrent: int | None) -> Any:
    """Seeded random/grid sampling, or Optuna's TPE (the ``tune-optuna`` extra), starting at
    most ``max_concurrent`` trials at once (None: as the resources allow). The limit is set on
    the searcher: Tune ignores ``TuneConfig.max_concurrent_trials`` next to a search generator."""
    t = setup.tune
    if t.search == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            optuna = OptunaSearch(seed=t.seed)
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


__all__ = ["param_space", "ray_domain", "scheduler", "searcher"]
