"""Installed package versions against the pins fedray was installed with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.doctor.check import Check, installed_version

PINNED = ("torch", "ray", "flwr", "deepspeed", "transformers")
"""Packages whose exact versions matter (checked one line each; the rest in one line)."""


def _requirements(requires: Iterable[str]) -> dict[str, Any]:
    """name -> packaging Requirement, for the install-time (non-extra) requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if req.marker is None or req.marker.evaluate():
            out[canonicalize_name(req.name)] = req
    return out


def _source_pyproject() -> Path | None:
    """pyproject.toml of a source checkout this package runs from (editable install), if any."""
    p = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return p if p.is_file() else None


def _pyproject_requires(path: Path) -> list[str] | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return None
    try:
        return list(tomllib.loads(path.read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def check_versions(
    requires: Iterable[str] | None = None,
    installed: Callable[[str], str | None] = installed_version,
    pyproject: Path | None = None,
) -> list[Check]:
    """Installed versions against the pins fedray was installed with (its metadata), and the
    installed metadata against the source ``pyproject.toml`` when running from a checkout."""

    checks = []
    pyproject = pyproject if pyproject is not None else _source_pyproject()
    if requires is None:
        try:
            requires = metadata.requires("fedray") or []
        except metadata.PackageNotFoundError:
            source = _pyproject_requires(pyproject) if pyproject else None
            if source is None:
                return [
                    Check(
                        "FAIL",
                        "fedray",
                        "not installed, so its pinned versions are unknown",
                        "pip install -e . (in the fedray checkout)",
                    )
                ]
            checks.append(
                Check(
                    "WARN",
                    "fedray",
                    f"not installed; pins read from {pyproject}",
                    "pip install -e .",
                )
            )
            requires = source
    requires = list(requires)
    reqs = _requirements(requires)
    for name in PINNED:
        req = reqs.get(name)
        have = installed(name)
        if req is None:
            checks.append(Check("WARN", name, f"{have or 'not installed'}; fedray pins no version"))
        elif have is None:
            checks.append(
                Check(
                    "FAIL", name, f"not installed (pinned {req.specifier})", f"pip install '{req}'"
                )
            )
        elif not req.specifier.contains(have, prereleases=True):
            checks.append(
                Check(
                    "FAIL",
                    name,
                    f"{have} installed, fedray pins {req.specifier}",
                    f"pip install '{req}'",
                )
            )
        else:
            checks.append(Check("OK", name, f"{have} (pinned {req.specifier})"))
    source = _pyproject_requires(pyproject) if pyproject else None
    wanted = _requirements(source) if source is not None else {}
    # Dependencies a newer checkout added are needed too (e.g. matplotlib for fedray report).
    others = {**{n: r for n, r in wanted.items() if n not in reqs}, **reqs}
    others = {n: r for n, r in others.items() if n not in PINNED}
    bad = []
    for name, req in sorted(others.items()):
        have = installed(name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            bad.append((req, have))
    if bad:
        listing = ", ".join(
            f"{r.name} {h or 'missing'} (wants {r.specifier or 'any'})" for r, h in bad
        )
        fix = "pip install " + " ".join(f"'{r}'" for r, _ in bad)
        checks.append(Check("FAIL", "other dependencies", listing, fix))
    else:
        checks.append(Check("OK", "other dependencies", f"{len(others)} satisfied"))
    if source is not None:
        missing = sorted(set(wanted) - set(reqs))
        changed = sorted(n for n in set(wanted) & set(reqs) if str(wanted[n]) != str(reqs[n]))
        if missing or changed:
            parts = ([f"new: {', '.join(missing)}"] if missing else []) + (
                [f"changed: {', '.join(changed)}"] if changed else []
            )
            checks.append(
                Check(
                    "WARN",
                    "fedray metadata",
                    f"installed requirements differ from {pyproject} ({'; '.join(parts)})",
                    "pip install -e . (re-install after pulling)",
                )
            )
    return checks
