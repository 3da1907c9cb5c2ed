"""``fedray report TUNE_DIR``: a search's report (a directory ``fedray tune`` wrote).

Plots: the metric of every trial over rounds or steps (the best trial drawn bold, failed trials
listed), and each tuned key against the metric (a scatter; log axis for ranges over a decade;
categories for strings). The HTML holds the trial table (``trials.jsonl``), the plots, the
eval-seed summary and the privacy line of ``summary.json``, and ``tune.yaml``.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from orchestrator.report.html import STYLE, figures
from orchestrator.report.load import ReportError
from orchestrator.report.plots import Plot, finish_plot, new_figure


def is_tune_dir(path: Path) -> bool:
    return (path / "trials.jsonl").is_file() and (path / "tune.yaml").is_file()


def load(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The trial rows and the summary (ReportError when garbled)."""
    try:
        rows = [json.loads(x) for x in (path / "trials.jsonl").read_text().splitlines() if x]
        summary_file = path / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a readable tune directory ({e})") from e
    if not rows:
        raise ReportError(f"{path}/trials.jsonl has no trials yet")
    return rows, summary


def curves(rows: list[dict[str, Any]], metric: str, unit: str, best: str | None) -> Plot:
    fig, (ax,) = new_figure()
    for r in rows:
        if not r["history"]:
            continue
        xs, ys = zip(*r["history"], strict=True)
        top = r["trial"] == best
        ax.plot(xs, ys, marker="o", ms=3, lw=2.5 if top else 0.8, alpha=1 if top else 0.6,
                color="C3" if top else "C0", label=f"best: {r['trial']}" if top else None)  # fmt: skip
    ax.set_xlabel(unit)
    ax.set_ylabel(metric)
    if best:
        ax.legend(fontsize=8)
    failed = [r["trial"] for r in rows if r["status"] == "error"]
    caption = f"{len(rows)} trials; failed (no curve): {', '.join(failed)}" if failed else ""
    return finish_plot("trials", f"{metric} per trial", fig, caption)


def key_plot(rows: list[dict[str, Any]], key: str, metric: str, best: str | None) -> Plot:
    fig, (ax,) = new_figure()
    pts = [
        (r["config"].get(key), r["metric"], r["trial"] == best)
        for r in rows
        if r["metric"] is not None and key in r["config"]  # a conditional key: only its branch
    ]
    xs = [p[0] for p in pts]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
    else:  # categories: strings, lists, booleans
        cats = sorted({str(x) for x in xs})
        ax.set_xticks(range(len(cats)), cats, fontsize=8, rotation=20)
        xs = [cats.index(str(x)) for x in xs]
    ax.scatter(
        xs,
        [p[1] for p in pts],
        c=["C3" if p[2] else "C0" for p in pts],
        s=[60 if p[2] else 20 for p in pts],
    )
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    return finish_plot(
        f"key-{key.replace('.', '_')}", f"{key} against {metric}", fig, "red: the best trial"
    )


def render(
    path: Path, rows: list[dict[str, Any]], summary: dict[str, Any], pngs: list[tuple[Plot, str]]
) -> str:
    best = (summary.get("best") or {}).get("trial")
    keys = sorted({k for r in rows for k in r["config"]})
    head = ["trial", *keys, "metric", "used", "status", "epsilon"]
    body_rows = []
    for r in rows:
        cells = [r["trial"], *(r["config"].get(k) for k in keys), r["metric"], r["used"],
                 r["status"] + (f": {r['error']}" if r["error"] else ""), r.get("epsilon")]  # fmt: skip
        style = ' style="font-weight:bold"' if r["trial"] == best else ""
        body_rows.append(
            f"<tr{style}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>"
        )
    table = (
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
        + "".join(body_rows) + "</table>"
    )  # fmt: skip
    extra = {
        k: summary.get(k) for k in ("status", "eval_seeds", "privacy", "wall_s") if summary.get(k)
    }
    tune_yaml = (path / "tune.yaml").read_text()
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fedray tune report: {html.escape(path.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>fedray tune: {html.escape(path.name)}</h1><p>Generated "
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}. Best trial in bold.</p>"
        f"<h2>Trials</h2>{table}<pre>{html.escape(json.dumps(extra, indent=1))}</pre>"
        f"<h2>Plots</h2>{figures(pngs)}"
        f"<details><summary>tune.yaml</summary><pre>{html.escape(tune_yaml)}</pre></details>"
        "</body></html>\n"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def tune_report(path: Path, out_dir: Path) -> tuple[Path, list[Path]]:
    """Write the search's plots and ``report.html`` into ``out_dir``; (html, pngs)."""
    rows, summary = load(path)
    best = (summary.get("best") or {}).get("trial")
    metric = summary.get("metric", "metric")
    unit = f"{'round' if summary.get('job') == 'federated' else 'step'}s"
    plots = [curves(rows, metric, unit, best)]
    plots += [
        key_plot(rows, k, metric, best) for k in sorted({k for r in rows for k in r["config"]})
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = []
    for p in plots:
        (out_dir / f"{p.name}.png").write_bytes(p.png)
        pngs.append((p, f"{p.name}.png"))
    page = out_dir / "report.html"
    page.write_text(render(path, rows, summary, pngs))
    return page, [out_dir / f for _, f in pngs]


__all__ = ["is_tune_dir", "tune_report"]
