"""Reading run directories for ``fedray report``: which kind of run, its rows, its summary.

A run directory holds ``metrics.jsonl`` (one JSON object per pretraining step or federated round,
plus ``{"event": ...}`` rows) and usually ``config.yaml``. Anything else given as a run is a
:class:`ReportError` whose message names the path and what was expected (the CLI exits 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.report.compression import compressed_export, load_compressions, with_record
from orchestrator.runs import read_metrics

RunKind = Literal["pretrain", "federated"]

# Older or future spellings of the pretraining keys -> the names the report uses.
PRETRAIN_ALIASES = {"step_time_s": "step_time", "val_perplexity": "val_ppl"}
# Round columns that have had more than one name, preferred first (see Run.key_of).
BYTES_UP = (("bytes-up",), ("bytes_up",))
BYTES_DOWN = (("bytes-down",), ("bytes_down",))
EPSILON = (("epsilon",), ("privacy", "epsilon"))
# Site notes written by the aggregation stages (strategies/fold.py and the rule files), by first word.
NOTE_KINDS = ("clipped", "trimmed", "discarded", "capped")


class ReportError(ValueError):
    """A path that is not a readable run directory; the message names it and says why."""


@dataclass
class Run:
    """One run directory, read and normalised (rows sorted, one per step or round)."""

    path: Path
    label: str
    kind: RunKind
    rows: list[dict[str, Any]]
    """Step rows (pretraining) or round rows (federated), sorted, the last row of a repeated
    step/round kept (a resumed run repeats the steps after its last checkpoint)."""
    task: str | None = None
    """Federated only: ``classification`` or ``causal_lm``."""
    events: list[str] = field(default_factory=list)
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    """``summary.json`` of a finished pretraining run (``wall_s``, ``params``, ...), if any."""
    warnings: list[str] = field(default_factory=list)
    wall_span: tuple[float, float] | None = None
    """First and last ``wall_time`` of any row, events included (pretraining)."""
    compressions: list[dict[str, Any]] = field(default_factory=list)
    """``compression.json`` of each ``fedray compress`` output in the run directory."""

    @property
    def x_key(self) -> str:
        return "step" if self.kind == "pretrain" else "round"

    # ---- series --------------------------------------------------------------------------

    def series(self, *keys: str) -> tuple[list[float], list[float]]:
        """(x, y) for the value at ``row[keys[0]][keys[1]]...``; rows without a finite value
        are left out."""
        xs, ys = [], []
        for r in self.rows:
            v: Any = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if finite(v):
                xs.append(float(r[self.x_key]))
                ys.append(float(v))
        return xs, ys

    def key_of(self, *candidates: tuple[str, ...]) -> tuple[str, ...]:
        """The first key path in ``candidates`` with any value (else the first): a column that
        has had more than one name, e.g. ``bytes-up`` (as encoded on the wire) before
        ``bytes_up`` (array bytes), or ``epsilon`` before ``privacy.epsilon``."""
        return next((k for k in candidates if self.series(*k)[1]), candidates[0])

    def sites(self) -> list[str]:
        """Site names seen in any round, sorted (federated)."""
        names: set[str] = set()
        for r in self.rows:
            if isinstance(r.get("sites"), dict):
                names.update(str(n) for n in r["sites"])
        return sorted(names)

    def last(self, *keys: str) -> float | None:
        ys = self.series(*keys)[1]
        return ys[-1] if ys else None

    def first(self, *keys: str) -> float | None:
        ys = self.series(*keys)[1]
        return ys[0] if ys else None

    def total(self, *keys: str) -> float | None:
        ys = self.series(*keys)[1]
        return sum(ys) if ys else None

    def max_x(self) -> int:
        return max(int(r[self.x_key]) for r in self.rows)

    def planned_x(self) -> int:
        """Planned steps/rounds from config.yaml (falls back to the last one recorded)."""
        section, key = (
            ("train", "max_steps") if self.kind == "pretrain" else ("federation", "num_rounds")
        )
        v = (self.config.get(section) or {}).get(key)
        return int(v) if isinstance(v, int) and v > 0 else max(1, self.max_x())

    def time_series(self, *keys: str) -> tuple[list[float], list[float]]:
        """Like :meth:`series`, but x = seconds since the run started (pretraining: the
        ``time`` column; federated: ``elapsed_s``). Approximate across resumed runs."""
        tkey = "time" if self.kind == "pretrain" else "elapsed_s"
        xs, ys = [], []
        for r in self.rows:
            v: Any = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if finite(v) and finite(r.get(tkey)):
                xs.append(float(r[tkey]))
                ys.append(float(v))
        return xs, ys

    def wall_s(self) -> float | None:
        """Wall time: ``summary.json``'s ``wall_s`` (pretraining), else the span of the
        ``wall_time`` stamps, events included (pretraining), or the sum of ``round_time_s``
        (federated; start-up excluded)."""
        if finite(self.summary.get("wall_s")):
            return float(self.summary["wall_s"])
        if self.kind == "pretrain":
            return self.wall_span[1] - self.wall_span[0] if self.wall_span else None
        return self.total("round_time_s")

    def note_counts(self) -> dict[str, list[tuple[int, int]]]:
        """Per round, how many sites were accepted, rejected, sent nothing, or were clipped/
        trimmed/discarded/capped by the aggregation (from ``train`` and the per-site notes)."""
        out: dict[str, list[tuple[int, int]]] = {}
        for r in self.rows:
            if r["round"] == 0:
                continue
            counts = dict.fromkeys(("accepted", "rejected", "dropped", *NOTE_KINDS), 0)
            for s in (r.get("sites") or {}).values():
                if not isinstance(s, dict):
                    continue
                counts["rejected"] += bool(s.get("rejected"))
                counts["dropped"] += bool(s.get("dropped"))
                note = str(s.get("aggregation") or "")
                for kind in NOTE_KINDS:
                    counts[kind] += kind in note.split(":")[0]
            train = r.get("train") if isinstance(r.get("train"), dict) else {}
            if finite(train.get("sites-rejected")):
                counts["rejected"] = max(counts["rejected"], int(train["sites-rejected"]))
            if finite(train.get("sites-accepted")):
                counts["accepted"] = int(train["sites-accepted"])
            for k, n in counts.items():
                out.setdefault(k, []).append((int(r["round"]), n))
        return out


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_dir_of(path: Path) -> Path:
    """The run directory for ``path`` (a run directory, or its metrics.jsonl)."""
    p = path.expanduser()
    if p.is_file() and p.name == "metrics.jsonl":
        return p.parent
    if not p.exists():
        raise ReportError(f"{path}: no such directory; give a run directory (e.g. runs/NAME)")
    if not p.is_dir():
        raise ReportError(
            f"{path}: not a directory; give a run directory (config.yaml + metrics.jsonl)"
        )
    compressed = compressed_export(p)
    if compressed is not None:
        if compressed[0] is None:
            raise ReportError(
                f"{path}: a `fedray compress` output of {compressed[1].get('source')}, which is "
                "not a run's export (no metrics.jsonl beside it); its before/after numbers are "
                f"in {p / 'compression.json'}. Report a run: compress RUN_DIR/export."
            )
        return compressed[0]
    if not (p / "metrics.jsonl").is_file():
        raise ReportError(
            f"{path}: not a run directory (no metrics.jsonl); give a directory written by "
            "fedray pretrain, simulate or server"
        )
    return p


def _records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of a metrics.jsonl and warnings about lines that were not one."""
    lines = [(i, s) for i, s in enumerate(path.read_text(errors="replace").splitlines(), 1)]
    lines = [(i, s) for i, s in lines if s.strip()]
    if not lines:
        raise ReportError(f"{path}: empty; the run has recorded no step or round yet")
    records = [r for r in read_metrics(path) if isinstance(r, dict)]
    if len(records) == len(lines):
        return records, []
    bad = []
    for i, s in lines:
        try:
            ok = isinstance(json.loads(s), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            bad.append((i, s))
    if not records:
        i, s = bad[0]
        raise ReportError(
            f"{path}: garbled, no line is a JSON object (line {i}: {s[:60]!r}); "
            "not a metrics file written by fedray"
        )
    if len(bad) == 1 and bad[0][0] == lines[-1][0]:
        return records, []  # a half-written last line: the run is (or was) still writing
    return records, [
        f"{path}: skipped {len(bad)} line(s) that are not JSON objects (first: line {bad[0][0]})"
    ]


def _kind(records: list[dict[str, Any]], config: dict[str, Any], path: Path) -> RunKind:
    has_round = any(finite(r.get("round")) for r in records)
    has_step = any(finite(r.get("step")) for r in records)
    if has_round and has_step:
        return "federated" if "federation" in config else "pretrain"
    if has_round:
        return "federated"
    if has_step:
        return "pretrain"
    raise ReportError(
        f"{path}: no step or round rows (only {len(records)} event/other row(s)); "
        "the run stopped before its first step or round"
    )


def _dedupe(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    by_x: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_x[int(r[key])] = r  # the last one wins: a resumed run re-records the same step
    return [by_x[x] for x in sorted(by_x)]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read one run directory (raises :class:`ReportError` naming the path)."""
    d = run_dir_of(Path(path))
    metrics = d / "metrics.jsonl"
    try:
        records, warnings = _records(metrics)
    except OSError as e:
        raise ReportError(f"{metrics}: cannot be read ({e.strerror or e})") from e
    config_text, config = None, {}
    if (d / "config.yaml").is_file():
        config_text = (d / "config.yaml").read_text(errors="replace")
        try:
            loaded = yaml.safe_load(config_text)
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            warnings.append(f"{d / 'config.yaml'}: not valid YAML; shown as text only")
    summary = {}
    if (d / "summary.json").is_file():
        try:
            loaded = json.loads((d / "summary.json").read_text())
            summary = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, OSError):
            warnings.append(f"{d / 'summary.json'}: not valid JSON; ignored")
    kind = _kind(records, config, metrics)
    compressions, bad = load_compressions(d)
    warnings += bad
    if (named := compressed_export(Path(path).expanduser())) is not None:
        compressions = with_record(compressions, named[1])  # it may live outside the run
    key = "step" if kind == "pretrain" else "round"
    events = [str(r["event"]) for r in records if "event" in r]
    rows = [r for r in records if finite(r.get(key))]
    if kind == "pretrain":
        rows = [{PRETRAIN_ALIASES.get(k, k): v for k, v in r.items()} for r in rows]
    rows = _dedupe(rows, key)
    task = None
    if kind == "federated":
        task = (config.get("task") or {}).get("kind")
        if task not in ("classification", "causal_lm"):
            evals = [r.get("eval") or {} for r in rows]
            has_acc = any("accuracy" in e for e in evals if isinstance(e, dict))
            task = "classification" if has_acc else "causal_lm"
    stamps = [float(r["wall_time"]) for r in records if finite(r.get("wall_time"))]
    label = label or d.name
    # A `fedray simulate --centralized` run overlays its federation in every plot: say which.
    if kind == "federated" and any(r.get("centralized") is True for r in rows):
        label += "" if "centralized" in label else " (centralized)"
    return Run(
        path=d,
        label=label,
        kind=kind,
        rows=rows,
        task=task,
        events=events,
        config_text=config_text,
        config=config,
        summary=summary,
        warnings=warnings,
        wall_span=(min(stamps), max(stamps)) if len(stamps) > 1 else None,
        compressions=compressions,
    )


def labels_for(paths: list[Path]) -> list[str]:
    """Run labels: the directory name, with parents added until the labels are distinct."""
    parts = [p.expanduser().absolute().parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{lbl} ({i})" for i, lbl in enumerate(labels, 1)]
