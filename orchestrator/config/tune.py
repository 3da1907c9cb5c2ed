"""Typed configuration of ``fedray tune``: a job config (pretraining or federated) plus a ``tune``
section saying what to search and how.

A tune config is the job's own YAML with a ``tune:`` section added; the job it tunes is that
config without the section (``best.yaml`` is exactly that, with the best values filled in). Its
``run`` section names the tune's directory (default ``runs/tune-<time>``); each trial gets a run
directory under it.

The space's keys are checked against the tuned job's schema by
:func:`orchestrator.tune.space.parse_space` (unknown key, wrong domain for the key's type,
lo >= hi: a config error naming ``tune.space.<key>``, exit 2, before Ray starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from orchestrator.config.federated import FederatedJob
from orchestrator.config.fields import require
from orchestrator.config.schema import PretrainJob

Scheduler = Literal["fifo", "asha"]
Search = Literal["random", "grid", "optuna"]
Mode = Literal["min", "max"]
DOMAINS: tuple[str, ...] = ("choice", "uniform", "loguniform", "randint", "grid")
"""Search domains of ``tune.space`` (one per key): ``{choice: [a, b]}``, ``{uniform: [lo, hi]}``,
``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (integers lo..hi, both included),
``{grid: [a, b]}`` (every value, in every sample)."""


@dataclass
class TuneConfig:
    """``fedray tune``: what to search (``space``), for what (``metric``/``mode``) and how."""

    space: dict[str, Any] = field(default_factory=dict)
    """Config key of the tuned job -> search domain, e.g. ``train.lr: {loguniform: [1e-4,
    1e-2]}``, ``strategy.name: {choice: [fedavg, fedadam]}``. Nested mappings work too
    (``tune.space.train.lr.loguniform=[1e-4,1e-2]`` on the command line)."""
    conditional: dict[str, Any] = field(default_factory=dict)
    """Domains that depend on a ``choice``/``grid`` key of ``space``: choice key -> its value ->
    that value's own ``key: domain``, e.g. ``strategy.name: {fedadam: {strategy.server_lr:
    {loguniform: [1e-3, 1e-1]}}, fedavg: {strategy.server_lr: {loguniform: [0.3, 1.5]}}}``.
    A value without an entry draws nothing more; checked like ``space``
    (:mod:`orchestrator.tune.conditional`)."""
    metric: str | None = None
    """What a trial is scored on; ``null`` = ``val_loss`` (pretraining), ``macro-f1``
    (classification federations), ``perplexity`` (causal-LM federations)."""
    mode: Mode | None = None
    """``min`` or ``max``; ``null`` = the metric's natural direction (max for accuracy and
    macro-F1, min for losses and perplexity)."""
    num_samples: int = 8
    """Trials drawn from the space (with ``grid`` domains: samples of each grid point)."""
    max_concurrent_trials: int | None = None
    """Trials at once; ``null`` = as many as the resources allow (Ray's CPUs / each trial's)."""
    scheduler: Scheduler = "asha"
    """``asha``: stop bad trials early at a report (a federated round, a pretraining eval)
    (Li et al. 2020); ``fifo``: run every trial to the end."""
    grace_period: int = 1
    """ASHA: rounds (federated) or steps (pretraining) every trial runs before it may be stopped."""
    reduction_factor: float = 2.0
    """ASHA: keep the top 1/reduction_factor of trials at each rung."""
    search: Search = "random"
    """``random`` (seeded; grid domains are crossed), ``grid`` (every combination of ``choice``
    / ``grid`` domains, no continuous ones) or ``optuna`` (Optuna's TPE; needs
    ``pip install 'fedray[tune-optuna]'``)."""
    seed: int = 0
    """Seeds the searcher: the same seed draws the same trials."""
    max_failures: int = 0
    """Retries of a failed trial before it is recorded as failed (the search goes on)."""
    eval_seeds: list[int] = field(default_factory=list)
    """After the search, re-run the best ``eval_top_k`` configs on each of these seeds (the
    job's ``train.seed``, and ``federation.seed`` for federations) and report mean and spread:
    the tuned score is not just the luckiest draw. Empty = off."""
    eval_top_k: int = 1
    """How many of the best configs ``eval_seeds`` re-runs."""
    cpus_per_trial: float | None = None
    """CPUs reserved per trial; ``null`` = from the job (pretraining: its Ray Train workers'
    CPUs, the trial's own driver takes none; federated: ``federation.cpus_per_site``, as the
    in-process sites train one at a time)."""

    def __post_init__(self) -> None:
        require(self.mode in (None, *get_args(Mode)), self, "mode", "'min', 'max' or null")
        require(self.num_samples >= 1, self, "num_samples", "an integer >= 1")
        if self.max_concurrent_trials is not None:
            require(self.max_concurrent_trials >= 1, self, "max_concurrent_trials", ">= 1 or null")
        require(self.scheduler in get_args(Scheduler), self, "scheduler", "'fifo' or 'asha'")
        require(self.grace_period >= 1, self, "grace_period", "an integer >= 1")
        require(self.reduction_factor > 1, self, "reduction_factor", "a float > 1")
        require(self.search in get_args(Search), self, "search", "random | grid | optuna")
        require(self.max_failures >= 0, self, "max_failures", "an integer >= 0")
        require(self.eval_top_k >= 1, self, "eval_top_k", "an integer >= 1")
        if self.cpus_per_trial is not None:
            require(self.cpus_per_trial > 0, self, "cpus_per_trial", "a number > 0 or null")


@dataclass
class PretrainTune(PretrainJob):
    """``fedray tune`` of a pretraining job: the job's sections plus ``tune``."""

    tune: TuneConfig = field(default_factory=TuneConfig)


@dataclass
class FederatedTune(FederatedJob):
    """``fedray tune`` of a federation: the job's sections plus ``tune`` (the job's ``cluster``
    says where the trials run: the embedded Ray by default, a cluster with ``cluster.address``)."""

    tune: TuneConfig = field(default_factory=TuneConfig)


JOB_KINDS: dict[str, tuple[type, type, str]] = {
    "pretrain": (PretrainTune, PretrainJob, "pretrain-tiny"),
    "federated": (FederatedTune, FederatedJob, "simulate-demo"),
}
"""kind -> (tune schema, tuned job schema, the preset whose defaults a config without its own
file starts from)."""


def job_kind(top_keys: set[str]) -> str | None:
    """``pretrain`` or ``federated`` from a config's top-level keys (keys only one of the two
    schemas has), or None when the keys do not tell (only shared sections)."""
    import dataclasses

    pre = {f.name for f in dataclasses.fields(PretrainJob)}
    fed = {f.name for f in dataclasses.fields(FederatedJob)}
    if top_keys & (fed - pre):
        return "federated"
    if top_keys & (pre - fed - {"cluster"}):
        return "pretrain"
    return None


__all__ = [
    "DOMAINS",
    "JOB_KINDS",
    "FederatedTune",
    "PretrainTune",
    "TuneConfig",
    "job_kind",
]
