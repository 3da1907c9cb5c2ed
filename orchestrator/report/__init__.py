"""``fedray report``: plots and a self-contained HTML report of one or more run directories.

    fedray report runs/pretrain-20260101-120000                  # -> runs/pretrain-.../report/
    fedray report runs/fed-fedavg runs/fed-median runs/central   # -> ./report-<timestamp>/
    fedray report runs/a runs/b --out /tmp/ab                    # -> /tmp/ab/

Writes ``report.html`` (summary table, plots embedded as base64 PNGs, each run's config) and the
same plots as PNG files next to it. Pretraining runs: loss, perplexity, learning rate, gradient
norm, throughput. Federated runs: per-round global and per-site accuracy / macro-F1 (or
perplexity), eval and train loss, bytes up/down, rejected / dropped / clipped sites, epsilon
when recorded. Several runs: the same curves overlaid (one line per run, labelled by directory
name) and, for a pretraining run next to a federated causal-LM run, their held-out losses on
shared axes (federated vs centralized). A run directory holding ``fedray compress`` outputs
(``RUN_DIR/export-int8/compression.json``) also gets a table of size, held-out quality and
tokens/s before and after compression.

A ``fedray tune`` directory (``fedray report runs/tune-...``): the metric of every trial over
rounds or steps with the best trial highlighted, each tuned key against the metric, the trial
table (:mod:`orchestrator.report.tune`).

Exit codes: 0 written; 2 a path is not a run directory or its metrics.jsonl is empty or garbled
(one line naming the path); 1 the output could not be written. The library entry point is :func:`build_report`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def report_hint(run_dir: str | Path) -> str:
    """The line a run prints last: how to turn its directory into plots and an HTML report."""
    return f"Plots and an HTML report of this run: fedray report {shlex.quote(str(run_dir))}"


def default_out(run_dirs: Sequence[Path]) -> Path:
    """One run: ``RUN_DIR/report``; several: ``./report-<YYYYmmdd-HHMMSS>``."""
    if len(run_dirs) == 1:
        return run_dirs[0] / "report"
    return Path(f"report-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


def _file_stem(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    html: Path
    pngs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Lines of metrics.jsonl that were skipped, unreadable config.yaml, ..."""


def build_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Read the runs, draw the plots, write PNGs and ``report.html`` into ``out`` (default:
    :func:`default_out`). Raises :class:`~orchestrator.report.load.ReportError` on bad input
    (before anything is written)."""
    from orchestrator.report import html, plots
    from orchestrator.report.load import labels_for, load_run, run_dir_of
    from orchestrator.report.tune import is_tune_dir, tune_report

    if not paths:
        raise ValueError("give at least one run directory")
    if len(paths) == 1 and is_tune_dir(Path(paths[0])):  # a `fedray tune` directory
        tune_dir = Path(paths[0])
        page, pngs = tune_report(tune_dir, Path(out).expanduser() if out else tune_dir / "report")
        return Report(page, pngs)
    dirs = [run_dir_of(Path(p)) for p in paths]
    # load_run gets the path as given: a compressed export named there joins its run's table.
    runs = [load_run(p, label) for p, label in zip(paths, labels_for(dirs), strict=True)]
    out_dir = Path(out).expanduser() if out is not None else default_out(dirs)
    single = len(runs) == 1

    per_run = []
    for run in runs:
        drawn = plots.pretrain_plots(run) if run.kind == "pretrain" else plots.federated_plots(run)
        prefix = "" if single else f"{_file_stem(run.label)}-"
        per_run.append([(p, f"{prefix}{p.name}.png") for p in drawn])
    comparison = [(p, f"compare-{p.name}.png") for p in plots.compare_plots(runs)]

    notes = []
    kinds = {r.kind for r in runs}
    if kinds == {"pretrain", "federated"} and not any(
        p.name == "federated-vs-centralized" for p, _ in comparison
    ):
        notes.append(
            "No federated-vs-centralized plot: it needs a pretraining run with validation loss "
            "and a federated causal_lm run with eval-loss (a classification run's loss is over "
            "classes, not tokens, so it is not comparable)."
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir / "report.html", warnings=[w for r in runs for w in r.warnings])
    for p, fname in [*(x for group in per_run for x in group), *comparison]:
        (out_dir / fname).write_bytes(p.png)
        report.pngs.append(out_dir / fname)
    report.html.write_text(html.render(runs, per_run, comparison, notes))
    return report


__all__ = ["Report", "build_report", "default_out", "report_hint"]
