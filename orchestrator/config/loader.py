"""Load a job config: schema defaults <- preset or YAML file <- ``key=value`` overrides.

Everything is validated before anything starts. Every user mistake becomes a :class:`ConfigError`
naming the full key path, the value received, what is allowed and how to fix it; the CLI turns it
into exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from orchestrator.config.schema import FieldError

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration error (exit code 2)."""

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(message)


def preset_names() -> list[str]:
    """Names of the presets shipped with fedray (``fedray pretrain <name>`` loads one)."""
    files = resources.files("orchestrator.config").joinpath("presets")
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str) -> dict[str, Any]:
    """Read a YAML file path, or a preset name."""
    path = Path(source).expanduser()
    if not path.exists():
        preset = resources.files("orchestrator.config").joinpath("presets", f"{source}.yaml")
        if preset.is_file():
            text = preset.read_text()
        else:
            raise ConfigError(
                f"config {source!r}: no such file and no such preset. "
                f"Presets: {', '.join(preset_names())}. Pass a YAML file path or a preset name."
            )
    else:
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {source!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {source!r} must be a YAML mapping, got {type(data).__name__}")
    return data


def source_keys(source: str) -> set[str]:
    """The top-level keys of a YAML file or preset (``fedray tune`` tells a job's kind by them)."""
    return set(_read_source(source))


def _type_paths(schema: type, prefix: str = "") -> dict[type, str]:
    """Map each section dataclass to its key path (to name the key in __post_init__ errors)."""
    out: dict[type, str] = {schema: prefix}
    for f in dataclasses.fields(schema):
        t = f.type if isinstance(f.type, type) else None
        if t is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            t = type(f.default_factory())  # type: ignore[misc]
        if t is not None and dataclasses.is_dataclass(t):
            out.update(_type_paths(t, f"{prefix}{f.name}."))
    return out


def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).split("\n")[0]
    if isinstance(e, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return ConfigError(
            f"unknown config key '{key}'. Check the spelling; `--print-config` lists every key"
            + (f" under '{parent}'." if parent else "."),
            key,
        )
    if isinstance(e, ValidationError):
        return ConfigError(f"{key}: {msg}. Give a value of the right type.", key)
    return ConfigError(f"{key}: {msg}", key)


def load_config(
    schema: type[T],
    source: str | None = None,
    overrides: Sequence[str] = (),
    default_preset: str | None = None,
) -> T:
    """Build, merge and validate a job config; return the typed dataclass instance."""
    merged = load_dictconfig(schema, source, overrides, default_preset)
    return to_job(schema, merged)


@functools.cache
def _schema_defaults(schema: type) -> DictConfig:
    """The schema's defaults as a DictConfig, built once per schema (about half of each load's
    time). Never handed out: ``OmegaConf.merge`` copies its first argument."""
    return OmegaConf.structured(schema)


def load_dictconfig(
    schema: type,
    source: str | None = None,
    overrides: Sequence[str] = (),
    default_preset: str | None = None,
) -> DictConfig:
    """Merge schema defaults, a YAML file/preset and overrides (types checked, values not yet)."""
    base = _schema_defaults(schema)
    layers: list[Any] = []
    src = source or default_preset
    if src is not None:
        layers.append(_read_source(src))
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"override {bad[0]!r} is not of the form key=value (e.g. train.max_steps=100)."
        )
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(base, *layers)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from e
    assert isinstance(merged, DictConfig)
    _check_architecture_overrides(merged, overrides)
    return merged


ARCHITECTURE_KEYS = (
    "family", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_position",
    "tie_embeddings",
)  # fmt: skip
"""``model.*`` fields that only shape a model built from scratch (``model.path`` unset)."""


def _check_architecture_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """An architecture override next to a ``model.path`` would be silently ignored (the
    architecture comes from the directory's config.json): refuse it, naming the fix."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("path") in (None, ""):
        return
    keys = [o.split("=", 1)[0].strip().lstrip("+~") for o in overrides]
    if given := [k for k in keys if k in {f"model.{a}" for a in ARCHITECTURE_KEYS}]:
        raise ConfigError(
            f"{given[0]} has no effect while model.path={model.get('path')!r} is set: the "
            "architecture comes from that directory's config.json. To build a model of your "
            "own size from random weights, add model.path=null; else drop the override.",
            given[0],
        )


def to_job(schema: type[T], cfg: DictConfig) -> T:
    """Instantiate the dataclasses (running every ``__post_init__`` check)."""
    try:
        job = OmegaConf.to_object(cfg)
    except FieldError as e:
        path = _type_paths(schema).get(e.owner, "")
        key = f"{path}{e.field}"
        fix = f" {e.fix}" if e.fix else ""
        raise ConfigError(
            f"{key}={e.value!r} is not allowed: expected {e.allowed}.{fix} "
            f"(set it in the YAML file or with {key}=...)",
            key,
        ) from e
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from e
    assert isinstance(job, schema)
    return job


def to_yaml(job: Any) -> str:
    """The resolved config as YAML (what ``--print-config`` shows and each run saves)."""
    return OmegaConf.to_yaml(OmegaConf.structured(job))
