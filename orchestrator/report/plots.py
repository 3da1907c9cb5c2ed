"""The report's plots: matplotlib figures drawn off-screen (Agg canvas, no pyplot, no display).

Every function returns :class:`Plot` objects holding PNG bytes; nothing here writes files.
One run: its own curves (per site for federated runs). Several runs: the same curves overlaid,
one line per run, grouped by kind, plus "federated vs centralized" when a pretraining run and a
federated causal-LM run both have an evaluation loss.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchestrator.report.load import BYTES_DOWN, BYTES_UP, EPSILON, NOTE_KINDS, Run

SIZE = (6.4, 3.6)
DPI = 100
SITE_LEGEND_MAX = 10  # more sites than this: per-site lines without a legend entry each


@dataclass
class Plot:
    name: str
    """File stem (``loss`` -> ``loss.png``)."""
    title: str
    png: bytes
    caption: str = ""


def new_figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(SIZE[0] * (1 if ncols == 1 else 0.8 * ncols), SIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def finish_plot(name: str, title: str, fig: Figure, caption: str = "") -> Plot:
    fig.suptitle(title, fontsize=11)
    return Plot(name, title, _png(fig), caption)


def _legend(ax, n: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2 if n > 5 else 1, loc="best", framealpha=0.8)


def _positive(ys: Sequence[float]) -> bool:
    return bool(ys) and min(ys) > 0


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---- pretraining ------------------------------------------------------------------------------


def pretrain_plots(run: Run) -> list[Plot]:
    plots = []
    xs, loss = run.series("loss")
    vx, vloss = run.series("val_loss")
    if loss or vloss:
        fig, (ax,) = new_figure()
        if loss:
            ax.plot(xs, loss, lw=1.2, label="train loss")
        if vloss:
            ax.plot(vx, vloss, "o-", lw=1.5, ms=4, label="validation loss")
        ax.set(xlabel="step", ylabel="loss (nats/token)")
        _integer_x(ax)
        _legend(ax, 2)
        plots.append(finish_plot("loss", "Loss", fig))
    px, ppl = run.series("val_ppl")
    if ppl or loss:
        fig, (ax,) = new_figure()
        if loss:
            ax.plot(
                xs,
                [math.exp(min(v, 50.0)) for v in loss],
                lw=1,
                ls="--",
                alpha=0.7,
                label="exp(train loss)",
            )
        if ppl:
            ax.plot(px, ppl, "o-", lw=1.5, ms=4, label="validation perplexity")
        ax.set(xlabel="step", ylabel="perplexity", yscale="log")
        _integer_x(ax)
        _legend(ax, 2)
        plots.append(finish_plot("perplexity", "Perplexity", fig))
    for key, name, title, ylabel in (
        ("lr", "lr", "Learning rate", "learning rate"),
        ("grad_norm", "grad-norm", "Gradient norm (before clipping)", "global L2 norm"),
    ):
        gx, gy = run.series(key)
        if gy:
            fig, (ax,) = new_figure()
            ax.plot(gx, gy, lw=1.2)
            ax.set(xlabel="step", ylabel=ylabel)
            _integer_x(ax)
            plots.append(finish_plot(name, title, fig))
    tx, tps = run.series("tokens_per_s")
    if tps:
        fig, (ax,) = new_figure()
        ax.plot(tx, tps, lw=1.2, label="tokens/s")
        ax.set(xlabel="step", ylabel="tokens / s (all workers)")
        _integer_x(ax)
        mx, mfu = run.series("mfu")
        if mfu:
            ax2 = ax.twinx()
            ax2.plot(mx, [v * 100 for v in mfu], lw=1, color="tab:orange", label="MFU %")
            ax2.set_ylabel("MFU (%)")
            ax2.legend(fontsize=7, loc="lower right")
        plots.append(finish_plot("throughput", "Throughput", fig))
    return plots


# ---- federated --------------------------------------------------------------------------------


def metric_names(run: Run) -> list[tuple[str, str]]:
    """(eval key, display name) of the run's task metrics."""
    if run.task == "classification":
        return [("accuracy", "accuracy"), ("macro-f1", "macro-F1")]
    return [("perplexity", "perplexity")]


def _global_and_sites(run: Run, ax, group: str, key: str, global_label: str) -> bool:
    """The global curve (thick) and one thin curve per site; False when there is no data."""
    gx, gy = run.series(group, key)
    sites = run.sites()
    drew = False
    for i, site in enumerate(sites):
        sx, sy = run.series("sites", site, key)
        if sy:
            ax.plot(
                sx,
                sy,
                "o-",
                lw=0.9,
                ms=2.5,
                alpha=0.7,
                color=f"C{i % 10}",
                label=site if len(sites) <= SITE_LEGEND_MAX else None,
            )
            drew = True
    if gy:
        ax.plot(gx, gy, "o-", lw=2.4, ms=4, color="black", label=global_label)
        drew = True
    return drew


def federated_plots(run: Run) -> list[Plot]:
    plots = []
    n_sites = len(run.sites())
    evaluated = "round 0 = the starting model"
    for key, name in [*metric_names(run), ("eval-loss", "eval loss")]:
        fig, (ax,) = new_figure()
        if _global_and_sites(run, ax, "eval", key, f"global ({name} over all sites' eval data)"):
            ax.set(xlabel="round", ylabel=name)
            if key == "perplexity" and _positive(run.series("eval", key)[1]):
                ax.set_yscale("log")
            _integer_x(ax)
            _legend(ax, n_sites + 1)
            plots.append(finish_plot(key, f"{name[0].upper()}{name[1:]} per round", fig, evaluated))
    fig, (ax,) = new_figure()
    if _global_and_sites(run, ax, "train", "train-loss", "mean over accepted sites"):
        ax.set(xlabel="round", ylabel="local training loss")
        _integer_x(ax)
        _legend(ax, n_sites + 1)
        plots.append(finish_plot("train-loss", "Local training loss per round", fig))
    ux, up = run.series(*run.key_of(*BYTES_UP))
    dx, down = run.series(*run.key_of(*BYTES_DOWN))
    if up or down:
        fig, (ax,) = new_figure()
        w = 0.4
        ax.bar([x - w / 2 for x in ux], [v / 1e6 for v in up], w, label="up (sites -> server)")
        ax.bar([x + w / 2 for x in dx], [v / 1e6 for v in down], w, label="down (server -> sites)")
        ax.set(xlabel="round", ylabel="MB")
        _integer_x(ax)
        _legend(ax, 2)
        plots.append(
            finish_plot("bytes", "Bytes per round", fig, "down includes evaluation rounds")
        )
    counts = run.note_counts()
    always = ("accepted", "rejected")
    shown = {k: v for k, v in counts.items() if k in always or any(n for _, n in v)}
    if counts:
        fig, (ax,) = new_figure()
        kinds = [k for k in ("accepted", "rejected", "dropped", *NOTE_KINDS) if k in shown]
        colors = {"accepted": "tab:green", "rejected": "tab:red", "dropped": "tab:gray"}
        w = 0.8 / len(kinds)
        for i, k in enumerate(kinds):
            xs = [x - 0.4 + w * (i + 0.5) for x, _ in shown[k]]
            ax.bar(xs, [n for _, n in shown[k]], w, label=k, color=colors.get(k, f"C{i + 1}"))
        ax.set(xlabel="round", ylabel="sites", ylim=(0, max(1, n_sites) + 0.5))
        ax.yaxis.get_major_locator().set_params(integer=True)
        _integer_x(ax)
        _legend(ax, len(kinds))
        attack = next((r["attack"] for r in run.rows if isinstance(r.get("attack"), dict)), None)
        caption = (
            "rejected: failed validation; dropped: sent no update; clipped/trimmed/discarded/"
            "capped: what the aggregation did to an accepted update"
        )
        if attack:
            sites = ", ".join(map(str, attack.get("sites") or [])) or "-"
            caption += f". Simulated attack {attack.get('kind')} by {sites}"
        plots.append(
            finish_plot(
                "sites", "Sites per round: accepted, rejected, dropped, clipped", fig, caption
            )
        )
    ex, eps = run.series(*run.key_of(*EPSILON))
    if eps:
        fig, (ax,) = new_figure()
        ax.plot(ex, eps, "o-", lw=1.5, ms=4)
        ax.set(xlabel="round", ylabel="epsilon (cumulative)")
        _integer_x(ax)
        plots.append(finish_plot("epsilon", "Privacy budget spent", fig))
    return plots


# ---- several runs ---------------------------------------------------------------------------


def _overlay(
    runs: Sequence[Run],
    keys: tuple[str, ...],
    name: str,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    marker: str = "-",
) -> Plot | None:
    fig, (ax,) = new_figure()
    drew = []
    for i, run in enumerate(runs):
        xs, ys = run.series(*keys)
        if ys:
            ax.plot(xs, ys, marker, lw=1.5, ms=4, color=f"C{i % 10}", label=run.label)
            drew.extend(ys)
    if not drew:
        return None
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if log and _positive(drew):
        ax.set_yscale("log")
    _integer_x(ax)
    _legend(ax, len(runs))
    return finish_plot(name, title, fig)


def compare_plots(runs: Sequence[Run]) -> list[Plot]:
    """Overlays across runs of one kind (and task), and federated vs centralized."""
    plots: list[Plot | None] = []
    pre = [r for r in runs if r.kind == "pretrain"]
    if len(pre) > 1:
        plots += [
            _overlay(pre, ("loss",), "pretrain-loss", "Train loss", "step", "loss"),
            _overlay(
                pre,
                ("val_loss",),
                "pretrain-val-loss",
                "Validation loss",
                "step",
                "loss (nats/token)",
                marker="o-",
            ),
            _overlay(
                pre,
                ("val_ppl",),
                "pretrain-val-perplexity",
                "Validation perplexity",
                "step",
                "perplexity",
                log=True,
                marker="o-",
            ),
            _overlay(pre, ("lr",), "pretrain-lr", "Learning rate", "step", "learning rate"),
            _overlay(
                pre, ("tokens_per_s",), "pretrain-throughput", "Throughput", "step", "tokens / s"
            ),
        ]
    for task in ("classification", "causal_lm"):
        fed = [r for r in runs if r.kind == "federated" and r.task == task]
        if len(fed) < 2:
            continue
        tag = "fed-" if task == "classification" else "fed-lm-"
        for key, name in [*metric_names(fed[0]), ("eval-loss", "eval loss")]:
            plots.append(
                _overlay(
                    fed,
                    ("eval", key),
                    tag + key,
                    f"Global {name} per round",
                    "round",
                    name,
                    log=key == "perplexity",
                    marker="o-",
                )
            )
        plots += [
            _overlay(
                fed,
                ("train", "train-loss"),
                tag + "train-loss",
                "Local training loss per round",
                "round",
                "loss",
                marker="o-",
            ),
            _overlay(
                fed,
                fed[0].key_of(*BYTES_UP),
                tag + "bytes-up",
                "Bytes up per round",
                "round",
                "bytes (sites -> server)",
                marker="o-",
            ),
            _overlay(
                fed,
                ("train", "sites-rejected"),
                tag + "rejected",
                "Rejected sites per round",
                "round",
                "sites",
                marker="o-",
            ),
        ]
    plots.append(federated_vs_centralized(runs))
    return [p for p in plots if p is not None]


def federated_vs_centralized(runs: Sequence[Run]) -> Plot | None:
    """Held-out next-token loss of pretraining runs (``val_loss``) and federated causal-LM runs
    (``eval-loss``) on shared axes: against the fraction of the planned steps/rounds done, and
    against seconds since each run started."""
    pre = [r for r in runs if r.kind == "pretrain" and r.series("val_loss")[1]]
    fed = [
        r
        for r in runs
        if r.kind == "federated" and r.task == "causal_lm" and r.series("eval", "eval-loss")[1]
    ]
    if not pre or not fed:
        return None
    fig, (ax1, ax2) = new_figure(2)
    for i, run in enumerate([*pre, *fed]):
        keys = ("val_loss",) if run.kind == "pretrain" else ("eval", "eval-loss")
        kind = "centralized" if run.kind == "pretrain" else "federated"
        style = dict(color=f"C{i % 10}", lw=1.5, ms=4, label=f"{run.label} ({kind})")
        xs, ys = run.series(*keys)
        ls = "o-" if run.kind == "pretrain" else "s--"
        ax1.plot([x / run.planned_x() for x in xs], ys, ls, **style)
        tx, ty = run.time_series(*keys)
        if ty:
            ax2.plot(tx, ty, ls, **style)
    ax1.set(xlabel="fraction of planned steps / rounds", ylabel="held-out loss (nats/token)")
    ax2.set(xlabel="seconds since the run started", ylabel="held-out loss (nats/token)")
    _legend(ax1, len(pre) + len(fed))
    return finish_plot(
        "federated-vs-centralized",
        "Federated vs centralized: held-out next-token loss",
        fig,
        "centralized: validation loss of pretraining; federated: eval-loss pooled over the "
        "sites' held-out data (comparable when model, tokenizer and text source match)",
    )
