"""Console output of a federated run: the partition summary and one table row per round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

_out = Console(highlight=False)


def print_partition(
    rows: Sequence[dict[str, Any]], kind: str, total: int | None = None, console: Console = _out
) -> None:
    """Per-site size and label mix, e.g. ``site-0  1000  negative 62% neutral 21% positive 16%``.
    ``total``: the population, when ``rows`` lists only its first sites."""
    total = len(rows) if total is None else total
    console.print(f"[bold]partition[/] ({kind}): {total} sites")
    for r in rows:
        size = int(r["size"])
        mix = "  ".join(
            f"{name} {count / max(1, size):4.0%}" for name, count in r["labels"].items()
        )
        console.print(f"  site-{r['site']:<3} {size:6d} rows   {mix}", markup=False)
    if total > len(rows):
        console.print(f"  ... and {total - len(rows)} more sites", markup=False)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _epsilon(rec: dict[str, Any]) -> str:
    if "epsilon" not in rec:
        return "-"
    return "inf" if rec["epsilon"] is None else format(rec["epsilon"], ".3f")


class RoundTable:
    """Prints a header, then one line per round and an indented line per site."""

    def __init__(self, task: str, console: Console = _out, privacy: bool = False) -> None:
        self.task = task
        self.privacy = privacy  # an epsilon column (the privacy ledger's cumulative epsilon)
        self.console = console
        self.metric = "accuracy" if task == "classification" else "perplexity"
        # Per-task metric columns after eval-loss: (metrics key, header).
        self.columns = (
            [("accuracy", "accuracy"), ("macro-f1", "macro-F1")]
            if task == "classification"
            else [("perplexity", "perplexity")]
        )

    def header(self) -> None:
        self.console.print(
            f"{'round':>5} {'train-loss':>10} {'eval-loss':>9} "
            + "".join(f"{label:>10} " for _, label in self.columns)
            + (f"{'epsilon':>8} " if self.privacy else "")
            + f"{'sites':>5} {'rej':>3} {'up MB':>8} {'down MB':>8} {'time s':>7}",
            style="bold",
            markup=False,
            soft_wrap=True,
        )

    def note(self, text: str) -> None:
        """A line under the table (e.g. why the run stopped early)."""
        self.console.print(text, markup=False, style="bold", soft_wrap=True)

    def row(self, rec: dict[str, Any]) -> None:
        ev, tr = rec.get("eval", {}), rec.get("train", {})
        self.console.print(
            f"{rec['round']:>5} {_fmt(tr.get('train-loss'), '10.4f')} "
            f"{_fmt(ev.get('eval-loss'), '9.4f')} "
            + "".join(f"{_fmt(ev.get(key), '10.4f')} " for key, _ in self.columns)
            + (f"{_epsilon(rec):>8} " if self.privacy else "")
            + f"{int(tr.get('sites-accepted', 0)):>5} "
            f"{int(tr.get('sites-rejected', 0)):>3} {rec.get('bytes_up', 0) / 1e6:8.2f} "
            f"{rec.get('bytes_down', 0) / 1e6:8.2f} {rec.get('round_time_s', 0.0):7.1f}"
            + ("   (skipped: too few updates)" if rec.get("skipped") else ""),
            markup=False,
            soft_wrap=True,
        )
        if rec.get("dropped"):  # sampled sites that sent no update (crashed, timed out)
            self.console.print(
                f"      no update from: {', '.join(rec['dropped'])} (site lost or timed out)",
                markup=False,
                soft_wrap=True,
            )
        if rec.get("attack"):  # simulated attackers (recorded from the config, for analysis)
            a = rec["attack"]
            self.console.print(
                f"      simulated attack {a['kind']} by: {', '.join(a['sites']) or '-'}",
                markup=False,
                soft_wrap=True,
            )
        for name, s in sorted(rec.get("sites", {}).items()):
            parts = [f"{name:>12}:"]
            if "train-loss" in s:
                parts.append(f"train-loss {s['train-loss']:.4f}")
            if self.metric in s:
                parts.append(f"{self.metric} {s[self.metric]:.4f}")
            if "macro-f1" in s:
                parts.append(f"macro-F1 {s['macro-f1']:.4f}")
            if "num-examples" in s:
                parts.append(f"n={int(s['num-examples'])}")
            if "bytes-up" in s or "bytes-down" in s:  # as measured on the wire this round
                parts.append(
                    f"up {s.get('bytes-up', 0) / 1e6:.3f} MB down {s.get('bytes-down', 0) / 1e6:.3f} MB"
                )
            if s.get("aggregation"):  # what a robust rule / clip / cap did to this reply
                parts.append(s["aggregation"])
            if s.get("rejected"):
                parts.append(f"REJECTED: {s['rejected']}")
            if s.get("dropped"):
                parts.append(f"NO UPDATE: {s['dropped']}")
            self.console.print(
                "      " + "  ".join(parts), markup=False, style="dim", soft_wrap=True
            )
