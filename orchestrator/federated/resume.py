"""May a run directory be resumed with this job? Only if nothing that shapes the model changed.

A resumed federation must compute what the interrupted one would have: same model, data,
sites, strategy and seeds. Settings that only change how long or where it runs may differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from orchestrator.config.loader import ConfigError

MAY_CHANGE = (
    "federation.num_rounds",
    "federation.round_timeout_s",
    "federation.rejoin_wait_s",
    "federation.num_cpus",
    "privacy.target_epsilon",  # spend more (or less) budget: the ledger continues as is
    "federation.cpus_per_site",
    "federation.gpus_per_site",
    "data.cache_dir",
    "run.",
    "logging.",
)
"""Keys (or prefixes ending in '.') a resumed run may change."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def job_defaults() -> dict[str, Any]:
    """Every key of a federated job with its default value (flattened)."""
    from orchestrator.config.federated import FederatedJob

    return flatten(OmegaConf.to_container(OmegaConf.structured(FederatedJob)))


def changed_keys(saved_yaml: str, new_yaml: str) -> list[str]:
    """Keys whose values differ between two job YAMLs, excluding :data:`MAY_CHANGE`.

    A key the saved job lacks (a checkpoint written before that setting existed) counts as
    unchanged while the new job leaves it at its default: the old run behaved as the default.
    """
    old, new = flatten(yaml.safe_load(saved_yaml) or {}), flatten(yaml.safe_load(new_yaml) or {})
    defaults = job_defaults()
    missing = object()
    keys = sorted(set(old) | set(new))
    return [
        k
        for k in keys
        if old.get(k, missing) != new.get(k)
        and not (k not in old and new.get(k) == defaults.get(k, missing))
        and not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_CHANGE)
    ]


def check_resumable(saved_yaml: str, new_yaml: str, run_dir: Path) -> None:
    """Raise :class:`ConfigError` naming every changed key (no-op for old checkpoints that
    saved no config)."""
    if not saved_yaml:
        return
    changed = changed_keys(saved_yaml, new_yaml)
    if changed:
        old, new = flatten(yaml.safe_load(saved_yaml)), flatten(yaml.safe_load(new_yaml))
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise ConfigError(
            f"{run_dir} holds checkpoints of a run with a different job ({detail}). "
            "Resume it with its own config (fedray server --resume RUN_DIR, or the same "
            "YAML and overrides), or start a new run with another run.dir / run.name.",
            changed[0],
        )
