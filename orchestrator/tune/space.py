"""``tune.space`` parsed and checked against the tuned job's schema, before Ray starts.

Pure (no Ray): a space is a mapping ``config key -> {domain: args}`` (nested mappings are
flattened to dotted keys). Every mistake is a :class:`ConfigError` naming ``tune.space.<key>``:
a key the job does not have, a section instead of a setting, a domain of the wrong type for the
key (a string choice for a float key, ``uniform`` on an integer key), ``lo >= hi``, or a value the
job itself refuses (each choice, and both ends of a range, are run through the job's own
validation). :func:`apply` builds a trial's job from the base job and a drawn config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config.loader import ConfigError, to_job
from orchestrator.config.tune import DOMAINS

NUMERIC = {"uniform", "loguniform", "randint"}


@dataclass(frozen=True)
class Domain:
    """One key's search domain: ``kind`` in :data:`DOMAINS`; ``args`` the values (choice, grid)
    or ``(lo, hi)``."""

    kind: str
    args: tuple[Any, ...]

    @property
    def continuous(self) -> bool:
        return self.kind in NUMERIC


def flatten(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: {loguniform: [..]}}}`` -> ``{"train.lr": {loguniform: [..]}}``: a mapping
    whose single key is a domain name is a domain; any other mapping is a level of keys."""
    out: dict[str, Any] = {}
    for k, v in space.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (len(v) == 1 and next(iter(v)) in DOMAINS):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def leaf_type(schema: type, key: str, where: str = "tune.space") -> Any:
    """The annotated type of ``key`` (dotted) in the dataclass ``schema``; ConfigError (naming
    ``where.key``) if the job has no such setting, or if it is a section."""
    at: Any = schema
    for i, part in enumerate(key.split(".")):
        hints = typing.get_type_hints(at) if dataclasses.is_dataclass(at) else {}
        if part not in hints:
            known = ", ".join(sorted(hints)) if hints else "(none: it is not a section)"
            prefix = ".".join(key.split(".")[:i]) or "the job"
            why = f"the tuned job has no setting {key!r}: {prefix} has {known}"
            raise space_error(key, why, where)
        at = hints[part]
    if dataclasses.is_dataclass(at):
        raise space_error(key, f"{key!r} is a section, not a setting; tune one of its keys", where)
    return at


def space_error(key: str, why: str, where: str = "tune.space") -> ConfigError:
    """A mistake in the space, named by its full key (``where.key``)."""
    return ConfigError(
        f"{where}.{key}: {why}. Fix the key or its domain in the tune section "
        "(docs/tuning.md, 'Spaces').",
        f"{where}.{key}",
    )


def base_kind(t: Any) -> str:
    """``float``, ``int``, ``bool``, ``str`` or ``other`` (lists, ...) for a field type;
    Optional and Literal are looked through."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return base_kind(args[0]) if len(args) == 1 else "other"
    if origin is Literal:
        return base_kind(type(typing.get_args(t)[0]))
    return {float: "float", int: "int", bool: "bool", str: "str"}.get(t, "other")


def parse_domain(key: str, spec: Any, kind: str, where: str = "tune.space") -> Domain:
    """One key's domain, shape- and type-checked against the key's type ``kind``."""
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS):
        expected = f"{{{': ..., '.join(DOMAINS)}: ...}}"
        raise space_error(key, f"{spec!r} is not a domain; expected one of {expected}", where)
    name, args = next(iter(spec.items()))
    if not isinstance(args, (list, tuple)) or not args:
        raise space_error(key, f"{name} needs a non-empty list, got {args!r}", where)
    if name in NUMERIC:
        return _numeric(key, name, list(args), kind, where)
    return Domain(name, tuple(args))


def _numeric(key: str, name: str, args: list[Any], kind: str, where: str) -> Domain:
    if len(args) != 2 or not all(_is_number(a) for a in args):
        raise space_error(key, f"{name} needs [lo, hi] (two numbers), got {args!r}", where)
    lo, hi = args
    if name == "randint":
        if kind not in ("int", "float") or not all(float(a).is_integer() for a in args):
            raise space_error(
                key,
                f"randint needs an integer or float key and integer bounds ({kind} key, {args!r})",
                where,
            )
        lo, hi = int(lo), int(hi)
    elif kind != "float":
        use = "randint" if kind == "int" else "choice"
        why = f"{name} draws floats but {key!r} is a setting of type {kind}; use {use}"
        raise space_error(key, why, where)
    if lo >= hi:
        raise space_error(key, f"{name} needs lo < hi, got lo={lo} hi={hi}", where)
    if name == "loguniform" and lo <= 0:
        raise space_error(key, f"loguniform needs lo > 0, got lo={lo}", where)
    return Domain(name, (lo, hi))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_space(space: dict[str, Any], schema: type, job_cfg: DictConfig) -> dict[str, Domain]:
    """Every key of ``space`` checked against the tuned job (``schema``, its merged config
    ``job_cfg``); returns key -> :class:`Domain`."""
    flat = flatten(space)
    if not flat:
        raise ConfigError(
            "tune.space is empty: give at least one key -> domain, e.g. "
            "tune.space.train.lr.loguniform=[1e-4,1e-2] (docs/tuning.md).",
            "tune.space",
        )
    return {key: parse_key(key, spec, schema, job_cfg) for key, spec in flat.items()}


def parse_key(
    key: str,
    spec: Any,
    schema: type,
    job_cfg: DictConfig,
    where: str = "tune.space",
    fixed: dict[str, Any] | None = None,
) -> Domain:
    """One key's domain checked against the tuned job: its type, its shape, and each choice and
    both ends of a range through the job's own validation (with the ``fixed`` values set: a
    conditional domain is checked under the choice it hangs on)."""
    d = parse_domain(key, spec, base_kind(leaf_type(schema, key, where)), where)
    for value in d.args:
        try:
            apply(schema, job_cfg, {**(fixed or {}), key: value})
        except ConfigError as e:
            raise space_error(key, f"value {value!r} is refused by the job: {e}", where) from e
    return d


def apply(schema: type, job_cfg: DictConfig, values: dict[str, Any]) -> Any:
    """The tuned job with ``values`` (dotted key -> value) set, validated (ConfigError)."""
    cfg = job_cfg.copy()
    try:
        for k, v in values.items():
            OmegaConf.update(cfg, k, _plain(v), merge=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{k}={v!r}: {str(e).splitlines()[0]}", k) from e
    return to_job(schema, cfg)


def _plain(v: Any) -> Any:
    """numpy scalars (what samplers draw) as Python values OmegaConf accepts."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


__all__ = [
    "Domain",
    "apply",
    "base_kind",
    "flatten",
    "leaf_type",
    "parse_domain",
    "parse_key",
    "parse_space",
    "space_error",
]
