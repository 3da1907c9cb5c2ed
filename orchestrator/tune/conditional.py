"""``tune.conditional``: domains that depend on a choice made in ``tune.space``.

One range cannot suit every strategy (FedAdam's server step is ~0.01, an averaging rule's ~1),
so a key's domain may hang on the value of a ``choice``/``grid`` key of the space::

    tune:
      space:
        strategy.name: {choice: [fedavg, fedadam]}
      conditional:
        strategy.name:
          fedadam: {strategy.server_lr: {loguniform: [1.0e-3, 1.0e-1]}}
          fedavg: {strategy.server_lr: {loguniform: [0.3, 1.5]}}

A value without an entry draws nothing more (its trials keep the job's settings). Each branch's
keys are checked exactly like the space's, under the choice they hang on, and every mistake is a
config error naming ``tune.conditional.<choice key>.<value>[.<key>]``. Pure (no Ray).

On Ray Tune a conditional choice is a nested search space: random and grid search draw (or
cross) one dict per value, ``{"strategy.name": "fedadam", "strategy.server_lr@strategy.name=
fedadam": <domain>}`` (:func:`branch_dicts`), whose own domains Tune's variant generator then
resolves; Optuna defines the branch's keys by run under the same names
(:mod:`orchestrator.tune.search`). :func:`trial_values` turns either back into the flat
``key -> value`` a trial's job is built from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig

from orchestrator.config.loader import ConfigError
from orchestrator.tune.space import Domain, flatten, parse_key, space_error

Conditional = dict[str, dict[Any, dict[str, Domain]]]
"""choice key -> its value -> that value's own keys and domains."""
MARK = "@"
"""A trial-config key holding a conditional draw: ``"<choice key>@"`` (the branch dict random and
grid search draw) or ``"<key>@<choice key>=<value>"`` (a branch's own key, under every searcher).
No job setting has it."""
WHERE = "tune.conditional"


def parse_conditional(
    cond: dict[str, Any], space: dict[str, Domain], schema: type, job_cfg: DictConfig
) -> Conditional:
    """Every branch of ``tune.conditional`` checked against the space and the tuned job."""
    out: Conditional = {}
    owner: dict[str, str] = {}  # key -> the choice key it hangs on
    for decider, branches in deciders(cond, space):
        d = space[decider]
        if d.kind not in ("choice", "grid"):
            why = f"tune.space.{decider} is {d.kind}; a conditional space hangs on a choice or grid"
            raise space_error(decider, why, WHERE)
        if not isinstance(branches, dict) or not branches:
            why = (
                f"expected value -> {{key: domain}} for its values {list(d.args)}, got {branches!r}"
            )
            raise space_error(decider, why, WHERE)
        by_text = {str(v): v for v in d.args}
        out.setdefault(decider, {})  # dotted and nested spellings of one key merge
        for text, sub in branches.items():
            if str(text) not in by_text:
                why = f"{text!r} is not one of tune.space.{decider}'s values {list(d.args)}"
                raise space_error(f"{decider}.{text}", why, WHERE)
            value = by_text[str(text)]
            where = f"{WHERE}.{decider}.{text}"
            drawn = branch(sub, where, decider, value, space, schema, job_cfg)
            out[decider].setdefault(value, {}).update(drawn)
            for key in out[decider][value]:
                if owner.setdefault(key, decider) != decider:
                    why = f"{key!r} already hangs on tune.space.{owner[key]}; one choice per key"
                    raise space_error(key, why, where)
    return out


def deciders(cond: dict[str, Any], space: dict[str, Domain], prefix: str = "") -> Iterator[tuple]:
    """``(choice key, its branches)``: the choice key is the dotted prefix that is a key of the
    space (``tune.conditional.strategy.name.fedadam...`` on the command line nests every dot)."""
    for k, v in cond.items():
        key = f"{prefix}{k}"
        if key in space:
            yield key, v
        elif isinstance(v, dict) and any(s.startswith(f"{key}.") for s in space):
            yield from deciders(v, space, f"{key}.")
        else:
            why = (
                "not a key of tune.space; a conditional space hangs on a choice or grid key of "
                "tune.space (e.g. tune.conditional.strategy.name.fedadam.strategy.server_lr)"
            )
            raise space_error(key, why, WHERE)


def branch(
    sub: Any,
    where: str,
    decider: str,
    value: Any,
    space: dict[str, Domain],
    schema: type,
    job_cfg: DictConfig,
) -> dict[str, Domain]:
    """One value's keys and domains, each checked with the choice set to ``value``."""
    flat = flatten(sub) if isinstance(sub, dict) else {}
    if not flat:
        raise ConfigError(
            f"{where}: expected {{key: domain}} for this value, got {sub!r}. Fix it in the tune "
            "section (docs/tuning.md, 'Conditional spaces').",
            where,
        )
    out = {}
    for key, spec in flat.items():
        if key == decider or key in space:
            why = f"{key!r} is drawn by tune.space already; a key is either there or conditional"
            raise space_error(key, why, where)
        out[key] = parse_key(key, spec, schema, job_cfg, where, fixed={decider: value})
    return out


def keys(space: dict[str, Domain], cond: Conditional) -> list[str]:
    """Every tuned key: the space's, then the conditional ones (each once)."""
    out = list(space)
    for branches in cond.values():
        for domains in branches.values():
            out += [k for k in domains if k not in out]
    return out


def domains(space: dict[str, Domain], cond: Conditional) -> Iterator[tuple[str, Domain]]:
    """``(full key, domain)`` of every domain, the conditional ones named by where they sit."""
    yield from (("tune.space." + k, d) for k, d in space.items())
    for decider, branches in cond.items():
        for value, ds in branches.items():
            yield from ((f"{WHERE}.{decider}.{value}.{k}", d) for k, d in ds.items())


def branch_name(key: str, decider: str, value: Any) -> str:
    """A conditional key's name in a trial config: one per branch, so no two branches of a
    search share a parameter (Tune's variant generator refuses one path resolved to two values
    across grid points; TPE would mix FedAdam's steps with FedAvg's)."""
    return f"{key}{MARK}{decider}={value}"


def branch_dicts(
    decider: str, d: Domain, by_value: dict[Any, dict[str, Domain]], grid_search: bool
) -> list[dict[str, Any]]:
    """The dicts a nested search space chooses (or crosses) among for ``decider``: one per value
    and combination of the value's own grid points (``grid`` domains, and ``choice`` ones under
    grid search). Values are plain (a grid point) or a :class:`Domain` still to draw."""
    out = []
    for value in d.args:
        domains = by_value.get(value, {})
        crossed = ("grid", "choice") if grid_search else ("grid",)
        grids = [k for k, bd in domains.items() if bd.kind in crossed]
        for point in itertools.product(*(domains[k].args for k in grids)):
            fixed = dict(zip(grids, point, strict=True))
            drawn = {k: fixed.get(k, bd) for k, bd in domains.items()}
            out.append(
                {decider: value, **{branch_name(k, decider, value): v for k, v in drawn.items()}}
            )
    return out


def check_crossing(grid_search: bool, space: dict[str, Domain], cond: Conditional) -> None:
    """A ``grid`` domain in a branch runs every point, so its choice key must be crossed too (a
    ``grid`` domain, or grid search): a random draw of the choice cannot promise every point."""
    for decider, by_value in cond.items():
        if grid_search or space[decider].kind == "grid":
            continue
        for value, ds in by_value.items():
            if gr := [k for k, d in ds.items() if d.kind == "grid"]:
                why = (
                    f"a grid domain needs tune.space.{decider} crossed too: make it a grid "
                    "domain (or use tune.search=grid), or use choice here"
                )
                raise space_error(gr[0], why, f"{WHERE}.{decider}.{value}")


def trial_values(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's drawn config as flat ``key -> value``: branch dicts merged in, every branch
    parameter under its own key."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if MARK in k and isinstance(v, dict):
            out.update(trial_values(v))
        else:
            out[k.split(MARK)[0]] = v
    return out


__all__ = [
    "MARK",
    "Conditional",
    "branch_dicts",
    "branch_name",
    "check_crossing",
    "domains",
    "keys",
    "parse_conditional",
    "trial_values",
]
