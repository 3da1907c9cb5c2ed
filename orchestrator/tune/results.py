"""A finished (or partly finished) search as rows: ``trials.jsonl``, the console table, the best
trial, ``best.yaml``, the eval-seed summary and what the search spent of privacy. Pure: rows are
built from each trial's own ``metrics.jsonl`` (so a resumed trial keeps its earlier rounds) and
what Tune says about it (its config, its error).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STATUSES = ("complete", "stopped", "error")
"""``complete``: ran every round/step; ``stopped``: ASHA stopped it early; ``error``: it failed."""


@dataclass
class TrialRow:
    """One line of ``trials.jsonl``."""

    trial: str
    config: dict[str, Any]
    metric: float | None
    """The last evaluated value (what the search compares)."""
    used: int
    """Rounds (federated) or steps (pretraining) computed."""
    status: str
    error: str = ""
    epsilon: float | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    """(round or step, metric) at every evaluation."""
    run_dir: str = ""


def history(records: list[dict[str, Any]], metric: str, time_attr: str) -> list[tuple[int, float]]:
    """(round/step, value) of every record holding ``metric`` (federated rows keep it under
    ``eval``; round 0, the common starting model, is left out; a pretraining trial's records
    are its reports to Tune)."""
    out = []
    for r in records:
        value = r.get("eval", {}).get(metric) if "eval" in r else r.get(metric)
        t = r.get(time_attr, 0)
        if _number(value) and t >= 1:
            out.append((int(t), float(value)))
    return out


def _number(v: Any) -> bool:
    """A finite number (Tune's result tables hold NaN where a report lacked the column)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def trial_row(
    trial: str,
    config: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    metric: str,
    time_attr: str,
    max_t: int,
    error: str = "",
    run_dir: str = "",
) -> TrialRow:
    """A trial's row from its run directory's records and Tune's verdict (``error``)."""
    hist = history(records, metric, time_attr)
    used = max((int(r[time_attr]) for r in records if _number(r.get(time_attr))), default=0)
    eps = [float(r["epsilon"]) for r in records if _number(r.get("epsilon"))]
    status = "error" if error else "complete" if used >= max_t else "stopped"
    return TrialRow(
        trial,
        config,
        hist[-1][1] if hist else None,
        used,
        status,
        error,
        eps[-1] if eps else None,
        hist,
        run_dir,
    )


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best finished trial by its last metric (trials ASHA stopped only if none finished:
    a stopped trial's earlier-round score is not comparable with a full run's)."""
    scored = [r for r in rows if r.metric is not None and math.isfinite(r.metric)]
    pool = [r for r in scored if r.status == "complete"] or scored
    if not pool:
        return None
    sign = -1 if mode == "max" else 1
    return min(pool, key=lambda r: sign * r.metric)  # type: ignore[operator]


def top_configs(rows: list[TrialRow], mode: str, k: int) -> list[TrialRow]:
    """The ``k`` best finished trials (for ``tune.eval_seeds``)."""
    done = [r for r in rows if r.status == "complete" and r.metric is not None]
    sign = -1 if mode == "max" else 1
    return sorted(done, key=lambda r: sign * r.metric)[:k]  # type: ignore[operator]


def write_rows(path: Path, rows: list[TrialRow]) -> None:
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))


def read_rows(path: Path) -> list[TrialRow]:
    rows = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        d["history"] = [tuple(h) for h in d.get("history", [])]
        rows.append(TrialRow(**d))
    return rows


def privacy_spent(rows: list[TrialRow], delta: float) -> dict[str, Any] | None:
    """What the whole search spent: every trial saw the same sites' data, so the trials compose.
    Basic (sequential) composition: epsilons add up, and so do deltas (docs/privacy.md,
    "Tuning on private data"). None when no trial ran under DP."""
    eps = [r.epsilon for r in rows if r.epsilon is not None]
    if not eps:
        return None
    return {
        "epsilon": round(sum(eps), 4),
        "delta": delta * len(eps),
        "trials": len(eps),
        "composition": "basic (sum over trials)",
    }


def seed_summary(rows: list[TrialRow], keys: list[str]) -> list[dict[str, Any]]:
    """Eval-seed re-runs grouped by config (the tuned ``keys``): mean and spread per config."""
    groups: dict[str, list[TrialRow]] = {}
    for r in rows:
        cfg = {k: r.config[k] for k in keys if k in r.config}  # conditional keys: if drawn
        groups.setdefault(json.dumps(cfg, sort_keys=True), []).append(r)
    out = []
    for cfg, members in groups.items():
        vals = [m.metric for m in members if m.metric is not None]
        out.append(
            {
                "config": json.loads(cfg),
                "seeds": [m.config.get("train.seed") for m in members],
                "values": vals,
                "mean": statistics.fmean(vals) if vals else None,
                "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
                "failed": sum(m.status == "error" for m in members),
            }
        )
    return out


def table(
    rows: list[TrialRow], keys: list[str], metric: str, unit: str, best: TrialRow | None
) -> Table:
    """The console table: one line per trial, the best one marked."""
    t = Table(title=None, show_edge=False, pad_edge=False)
    t.add_column("trial", no_wrap=True)
    for col in [*keys, metric, unit, "status"]:
        t.add_column(col, overflow="fold")
    with_eps = any(r.epsilon is not None for r in rows)
    if with_eps:
        t.add_column("epsilon")
    for r in rows:
        mark = "* " if best is not None and r.trial == best.trial else "  "
        cells = [mark + r.trial, *(_fmt(r.config.get(k)) for k in keys), _fmt(r.metric)]
        cells += [str(r.used), r.status + (f": {r.error[:60]}" if r.error else "")]
        if with_eps:
            cells.append(_fmt(r.epsilon))
        t.add_row(*cells, style="bold" if mark.strip() else None)
    return t


def print_table(console: Console, *args: Any) -> None:
    console.print(table(*args))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


__all__ = [
    "STATUSES",
    "TrialRow",
    "best_row",
    "history",
    "print_table",
    "privacy_spent",
    "read_rows",
    "seed_summary",
    "table",
    "top_configs",
    "trial_row",
    "write_rows",
]
