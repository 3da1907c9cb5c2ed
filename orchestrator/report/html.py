"""The self-contained ``report.html``: summary table, comparison plots, one section per run.

Images are embedded as base64 ``data:`` URIs, so the file can be mailed or attached on its own.
Every string taken from a run (labels, site names, config text, events) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import statistics
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.report.compression import compression_table
from orchestrator.report.load import BYTES_DOWN, BYTES_UP, EPSILON, Run, finite
from orchestrator.report.plots import Plot

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 640px; width: 100%; }
figcaption { font-size: 0.8em; color: #555; max-width: 640px; }
.warn { color: #a15c00; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
small { color: #666; font-weight: normal; }
"""


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not finite(v):
        return str(v)
    if abs(v) >= 10**digits:
        return f"{v:,.0f}"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return str(int(v))
    return f"{v:.{digits}g}"


def kind_label(run: Run) -> str:
    return "pretrain" if run.kind == "pretrain" else f"federated {run.task}"


def summary_row(run: Run) -> dict[str, str]:
    """One row of the summary table: final metrics, progress, wall time, traffic."""
    row = {"run": run.label, "kind": kind_label(run)}
    unit = "steps" if run.kind == "pretrain" else "rounds"
    row["steps / rounds"] = f"{run.max_x()} / {run.planned_x()} {unit}"
    if run.kind == "pretrain":
        row["train loss"] = fmt(run.last("loss"))
        row["eval loss"] = fmt(run.last("val_loss"))
        row["perplexity"] = fmt(run.last("val_ppl"))
        tps = run.series("tokens_per_s")[1]
        row["tokens/s (median)"] = fmt(statistics.median(tps) if tps else None)
        mfu = run.series("mfu")[1]
        if mfu:
            row["MFU (median)"] = f"{statistics.median(mfu) * 100:.1f}%"
    else:
        row["train loss"] = fmt(run.last("train", "train-loss"))
        row["eval loss"] = fmt(run.last("eval", "eval-loss"))
        for key, name in (
            ("perplexity", "perplexity"),
            ("accuracy", "accuracy"),
            ("macro-f1", "macro-F1"),
        ):
            final, start = run.last("eval", key), run.first("eval", key)
            if final is not None:
                row[name] = f"{fmt(final)} (start {fmt(start)})"
        up, down = run.total(*run.key_of(*BYTES_UP)), run.total(*run.key_of(*BYTES_DOWN))
        row["MB up"] = fmt(up / 1e6 if up is not None else None)
        row["MB down"] = fmt(down / 1e6 if down is not None else None)
        row["site rejections"] = fmt(run.total("train", "sites-rejected") or 0)
        eps = run.last(*run.key_of(*EPSILON))
        if eps is not None:
            row["epsilon"] = fmt(eps)
    wall = run.wall_s()
    row["time (s)"] = fmt(round(wall, 1) if wall is not None else None)
    return row


COLUMNS = (
    "run",
    "kind",
    "steps / rounds",
    "train loss",
    "eval loss",
    "perplexity",
    "accuracy",
    "macro-F1",
    "tokens/s (median)",
    "MFU (median)",
    "time (s)",
    "MB up",
    "MB down",
    "site rejections",
    "epsilon",
)


def summary_table(runs: Sequence[Run]) -> str:
    rows = [summary_row(r) for r in runs]
    present = {c for r in rows for c in r}
    cols = [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r.get(c, '-'))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def figures(plots: Sequence[tuple[Plot, str]]) -> str:
    """``(plot, file name)`` pairs as figures with embedded PNGs."""
    out = []
    for p, fname in plots:
        data = base64.b64encode(p.png).decode("ascii")
        caption = html.escape(p.title + (f" ({p.caption})" if p.caption else ""))
        out.append(
            f'<figure><img alt="{html.escape(p.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption} &middot; {html.escape(fname)}</figcaption></figure>"
        )
    return '<div class="plots">' + "".join(out) + "</div>"


def run_section(i: int, run: Run, plots: Sequence[tuple[Plot, str]]) -> str:
    parts = [
        f'<h2 id="run-{i}">{html.escape(run.label)} <small>{html.escape(kind_label(run))}</small>'
        "</h2>",
        f"<p><code>{html.escape(str(run.path))}</code></p>",
    ]
    attack = next((r["attack"] for r in run.rows if isinstance(r.get("attack"), dict)), None)
    if attack:
        sites = ", ".join(map(str, attack.get("sites") or [])) or "-"
        parts.append(
            f"<p>Simulated attack <b>{html.escape(str(attack.get('kind')))}</b> by "
            f"{html.escape(sites)} (from the config, for analysis).</p>"
        )
    parts.append(figures(plots) if plots else "<p>No plottable metrics yet.</p>")
    parts.append(compression_table(run.compressions))
    if run.events:
        items = "".join(f"<li>{html.escape(e)}</li>" for e in run.events)
        parts.append(
            f"<details><summary>events ({len(run.events)})</summary><ul>{items}</ul></details>"
        )
    if run.config_text is not None:
        parts.append(
            "<details><summary>config.yaml</summary>"
            f"<pre>{html.escape(run.config_text)}</pre></details>"
        )
    return "\n".join(parts)


def render(
    runs: Sequence[Run],
    per_run: Sequence[Sequence[tuple[Plot, str]]],
    comparison: Sequence[tuple[Plot, str]],
    notes: Sequence[str] = (),
) -> str:
    title = "fedray report: " + ", ".join(r.label for r in runs)
    warnings = [w for r in runs for w in r.warnings]
    body = [
        "<h1>fedray report</h1>",
        f"<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} from "
        + ", ".join(f'<a href="#run-{i}">{html.escape(r.label)}</a>' for i, r in enumerate(runs))
        + ".</p>",
        "<h2>Summary</h2>",
        summary_table(runs),
        "<p><small>Final values; time: pretraining wall time, federated time spent in rounds "
        "(start-up excluded); MB: totals over all rounds.</small></p>",
    ]
    if warnings:
        body.append(
            "<ul>" + "".join(f'<li class="warn">{html.escape(w)}</li>' for w in warnings) + "</ul>"
        )
    if comparison or notes:
        body.append("<h2>Comparison</h2>")
        body += [f"<p>{html.escape(n)}</p>" for n in notes]
        if comparison:
            body.append(figures(comparison))
    body += [run_section(i, r, p) for i, (r, p) in enumerate(zip(runs, per_run, strict=True))]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
