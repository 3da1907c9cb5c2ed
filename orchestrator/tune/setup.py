"""A tune config loaded and checked, before Ray starts: which job it tunes, the parsed space, the
metric, the resources per trial. Pure (no Ray, no torch): ``--print-config``, ``--dry-run`` and
every config error answer at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from orchestrator.config.loader import ConfigError, load_dictconfig, source_keys, to_job, to_yaml
from orchestrator.config.tune import JOB_KINDS, job_kind
from orchestrator.tune import conditional as cond
from orchestrator.tune.space import Domain, apply, parse_space

MAXIMIZED = ("accuracy", "macro-f1")
"""Metrics where larger is better (every other one, losses and perplexity, is minimised)."""
METRICS = {
    "pretrain": ("val_loss", "val_ppl"),
    "classification": ("macro-f1", "accuracy", "eval-loss"),
    "causal_lm": ("perplexity", "eval-loss"),
}
"""What a trial can be scored on, by job (the first one is the default)."""


@dataclass
class TuneSetup:
    """Everything ``fedray tune`` needs to start (picklable: it travels to the trials)."""

    kind: str
    """``pretrain`` or ``federated``."""
    tune_job: Any
    """The whole config (the tuned job + ``tune``), as ``--print-config`` shows it."""
    job_yaml: str
    """The tuned job (no ``tune`` section) as YAML: each trial's base."""
    space: dict[str, Domain]
    metric: str
    mode: str
    conditional: cond.Conditional = field(default_factory=dict)
    """``tune.conditional`` parsed: choice key -> value -> that value's keys and domains."""

    @property
    def keys(self) -> list[str]:
        """Every tuned key (the space's, then the conditional ones)."""
        return cond.keys(self.space, self.conditional)

    @property
    def tune(self) -> Any:
        return self.tune_job.tune

    @property
    def job_schema(self) -> type:
        return JOB_KINDS[self.kind][1]

    @property
    def cluster(self) -> Any:
        return self.tune_job.cluster

    @property
    def time_attr(self) -> str:
        """The unit ASHA counts in: federated rounds, pretraining steps."""
        return "round" if self.kind == "federated" else "step"

    @property
    def max_t(self) -> int:
        j = self.tune_job
        return j.federation.num_rounds if self.kind == "federated" else j.train.max_steps

    def job_cfg(self) -> DictConfig:
        schema = self.job_schema
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(self.job_yaml))

    def job(self, values: dict[str, Any] | None = None) -> Any:
        """The tuned job with ``values`` (dotted key -> value) set."""
        return apply(self.job_schema, self.job_cfg(), values or {})

    def cpus_per_trial(self) -> float:
        """CPUs Ray reserves for one trial's own process (see ``tune.cpus_per_trial``)."""
        if self.tune.cpus_per_trial is not None:
            return float(self.tune.cpus_per_trial)
        # Pretraining: the trial only drives a Ray Train worker group, which reserves its own
        # CPUs; a federation trains its in-process sites one at a time.
        return 0.0 if self.kind == "pretrain" else float(self.tune_job.federation.cpus_per_site)

    def worker_cpus(self) -> float:
        """CPUs a trial's Ray Train workers reserve (pretraining; 0 for a federation)."""
        if self.kind != "pretrain":
            return 0.0
        s = self.tune_job.scaling
        return float(s.num_workers * s.cpus_per_worker)

    def max_concurrent(self, total_cpus: float) -> int | None:
        """``tune.max_concurrent_trials``, or for pretraining what ``total_cpus`` hold (Tune
        would otherwise start trials whose worker groups wait forever for CPUs)."""
        if self.tune.max_concurrent_trials is not None:
            return self.tune.max_concurrent_trials
        per = self.worker_cpus()
        return max(1, math.floor(total_cpus / per)) if per else None


def kind_of(source: str | None, overrides: Sequence[str]) -> str:
    """The tuned job's kind, from the config's top-level keys (file and overrides)."""
    if source is None:
        raise ConfigError(
            "fedray tune needs a config: a YAML file of the job to tune with a tune section "
            "(docs/tuning.md), e.g. fedray tune my-tune.yaml."
        )
    keys = source_keys(source) | {o.split("=", 1)[0].split(".")[0].lstrip("+~") for o in overrides}
    kind = job_kind(keys)
    if kind is None:
        raise ConfigError(
            f"config {source!r}: cannot tell whether it is a pretraining or a federated job. "
            "Add a section only one of them has (e.g. federation: or scaling:).",
        )
    return kind


def load_tune(source: str | None, overrides: Sequence[str] = ()) -> TuneSetup:
    """Load, validate and check the space of a tune config (ConfigError: exit 2)."""
    kind = kind_of(source, overrides)
    schema, job_schema, _ = JOB_KINDS[kind]
    merged = load_dictconfig(schema, source, overrides)
    tune_job = to_job(schema, merged)
    names = {f.name for f in dataclasses.fields(job_schema)}
    job_part = {k: v for k, v in OmegaConf.to_container(merged).items() if k in names}
    job_cfg = OmegaConf.merge(OmegaConf.structured(job_schema), job_part)
    space = parse_space(tune_job.tune.space, job_schema, job_cfg)
    branches = cond.parse_conditional(tune_job.tune.conditional, space, job_schema, job_cfg)
    metric, mode = metric_and_mode(kind, tune_job)
    check_search(tune_job.tune.search, list(cond.domains(space, branches)))
    cond.check_crossing(tune_job.tune.search == "grid", space, branches)
    job_yaml = to_yaml(to_job(job_schema, job_cfg))
    return TuneSetup(kind, tune_job, job_yaml, space, metric, mode, branches)


def check_search(search: str, domains: list[tuple[str, Domain]]) -> None:
    """Domains the searcher cannot draw (``domains``: full key -> domain): ConfigError."""
    if search == "grid" and (cont := [(k, d) for k, d in domains if d.continuous]):
        raise ConfigError(
            f"tune.search=grid needs choice or grid domains, but {cont[0][0]} is "
            f"{cont[0][1].kind}. Use search=random (or optuna), or list values with choice.",
            "tune.search",
        )
    if search == "optuna" and (gr := [k for k, d in domains if d.kind == "grid"]):
        raise ConfigError(
            f"tune.search=optuna cannot take a grid domain ({gr[0]}); use choice.",
            "tune.search",
        )


def metric_and_mode(kind: str, tune_job: Any) -> tuple[str, str]:
    """``tune.metric`` / ``tune.mode`` with the defaults filled in (ConfigError if unknown)."""
    which = "pretrain" if kind == "pretrain" else tune_job.task.kind
    allowed = METRICS[which]
    metric = tune_job.tune.metric or allowed[0]
    if metric not in allowed:
        raise ConfigError(
            f"tune.metric={metric!r}: a {which} job reports {', '.join(allowed)}. "
            "Pick one of them (or leave tune.metric unset for the default).",
            "tune.metric",
        )
    mode = tune_job.tune.mode or ("max" if metric in MAXIMIZED else "min")
    return metric, mode


def dry_run_plan(setup: TuneSetup, tune_dir: Path) -> dict[str, Any]:
    """What ``fedray tune --dry-run`` shows: the search, its space and what a trial reserves."""
    t = setup.tune
    return {
        "tune": {
            "job": setup.kind,
            "directory": str(tune_dir),
            "metric": f"{setup.metric} ({setup.mode})",
            "space": {k: {d.kind: list(d.args)} for k, d in setup.space.items()},
            **({"conditional": _shown(setup.conditional)} if setup.conditional else {}),
            "search": t.search,
            "num_samples": t.num_samples,
            "scheduler": (
                f"asha (time_attr={setup.time_attr}, max_t={setup.max_t}, grace_period="
                f"{t.grace_period}, reduction_factor={t.reduction_factor})"
                if t.scheduler == "asha"
                else "fifo (every trial runs to the end)"
            ),
            "trial": {
                "runs": "Ray Train worker group (as fedray pretrain)"
                if setup.kind == "pretrain"
                else "in-process federation: the ServerApp round loop + ClientApp (LocalGrid)",
                "cpus": setup.cpus_per_trial(),
                "worker_cpus": setup.worker_cpus(),
            },
            "max_concurrent_trials": t.max_concurrent_trials or "as the CPUs allow",
            "ray": setup.cluster.address or "embedded local Ray",
            "eval_seeds": list(t.eval_seeds) or "off",
        }
    }


def _shown(branches: cond.Conditional) -> dict[str, Any]:
    return {
        key: {str(v): {k: {d.kind: list(d.args)} for k, d in ds.items()} for v, ds in by.items()}
        for key, by in branches.items()
    }


__all__ = [
    "METRICS",
    "TuneSetup",
    "check_search",
    "dry_run_plan",
    "kind_of",
    "load_tune",
    "metric_and_mode",
]
