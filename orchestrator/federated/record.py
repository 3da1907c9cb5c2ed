"""A round's record: the typed value the loop builds once per round from what the round
returned, and writes as one ``metrics.jsonl`` row (``RoundRecord.to_json``).

Pure functions of the round's outcomes: no Flower, no strategy, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strategies.outcome import EvaluateOutcome, TrainOutcome
from strategies.replies import RoundReport, SiteReport

SiteRows = dict[str, dict[str, Any]]


@dataclass
class TrainStep:
    """A train round as the loop saw it: the strategy's outcome, and who was sent what."""

    outcome: TrainOutcome
    sampled: int
    """Sites sent a train message."""
    dropped: list[str] = field(default_factory=list)
    """Sampled sites with no reply (names)."""
    lost: list[SiteReport] = field(default_factory=list)
    """Error replies the SuperLink sent for sites it lost, under its own node ids."""
    bytes_down: dict[str, int] = field(default_factory=dict)
    """Wire bytes sent to each site (by name)."""

    def train_columns(self) -> dict[str, Any]:
        return {
            **self.outcome.metrics,
            "sites-sampled": self.sampled,
            "sites-dropped": len(self.dropped),
        }


@dataclass
class RoundRecord:
    """One round (0 = the starting model, evaluated only)."""

    round: int
    eval: dict[str, Any]
    sites: SiteRows
    bytes_up: int
    bytes_down: int
    round_time_s: float
    elapsed_s: float
    train: dict[str, Any] | None = None
    dropped: list[str] | None = None
    skipped: bool | None = None
    skip_reason: str = ""
    epsilon: float | None = None
    privacy: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` row: optional columns only where the round has them."""
        rec: dict[str, Any] = {"round": self.round}
        if self.train is not None:
            rec["train"] = self.train
        rec.update(eval=self.eval, sites=self.sites)
        if self.dropped is not None:
            rec["dropped"] = self.dropped
        rec.update(bytes_up=self.bytes_up, bytes_down=self.bytes_down)
        if self.skipped is not None:
            rec["skipped"] = self.skipped
        rec.update(round_time_s=self.round_time_s, elapsed_s=self.elapsed_s)
        if self.skip_reason:
            rec["skip_reason"] = self.skip_reason
        if self.privacy is not None:
            rec.update(epsilon=self.epsilon, privacy=self.privacy)
        if self.attack is not None:
            rec["attack"] = self.attack
        return rec


def site_rows(train: RoundReport, evaluate: RoundReport) -> SiteRows:
    """Per-site columns: train metrics, rejections, the fold's notes, the evaluation."""
    sites: SiteRows = {}
    for s in train.sites:
        row = sites.setdefault(s.site, {})
        row.update(s.metrics)
        if not s.accepted:
            row["rejected"] = s.reason
    for name, note in train.notes.items():
        sites.setdefault(name, {})["aggregation"] = note
    for s in evaluate.sites:
        row = sites.setdefault(s.site, {})
        for k, v in s.metrics.items():
            row["eval-examples" if k == "num-examples" else k] = v
        if not s.accepted:
            row["eval-error"] = s.reason
    return sites


def add_site_bytes(sites: SiteRows, reports: list[RoundReport], down: dict[str, int]) -> None:
    """Each site's ``bytes-up`` (its replies, as received) and ``bytes-down`` (what it was
    sent) this round, added to its row."""
    for r in (s for report in reports for s in report.sites):
        row = sites.setdefault(r.site, {})
        row["bytes-up"] = row.get("bytes-up", 0) + r.bytes
    for name, n in down.items():
        row = sites.setdefault(name, {})
        row["bytes-down"] = row.get("bytes-down", 0) + n


def merge_counts(*counts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            out[k] = out.get(k, 0) + n
    return out


def evaluation_record(
    ev: EvaluateOutcome, down: dict[str, int], round_time_s: float, elapsed_s: float
) -> RoundRecord:
    """Round 0: the starting model's evaluation."""
    sites = site_rows(RoundReport(), ev.report)
    add_site_bytes(sites, [ev.report], down)
    return RoundRecord(
        round=0,
        eval=pooled_eval(ev),
        sites=sites,
        bytes_up=ev.report.bytes,
        bytes_down=sum(down.values()),
        round_time_s=round_time_s,
        elapsed_s=elapsed_s,
    )


def pooled_eval(ev: EvaluateOutcome) -> dict[str, Any]:
    """The record's ``eval`` column: the pooled scalars (the confusion matrix stays out)."""
    return {k: v for k, v in (ev.metrics or {}).items() if not isinstance(v, list)}


def train_record(
    server_round: int,
    step: TrainStep,
    ev: EvaluateOutcome,
    eval_down: dict[str, int],
    timing: tuple[float, float],
) -> RoundRecord:
    """A train round's record; privacy and attack columns are the loop's to add."""
    out = step.outcome
    sites = site_rows(out.report, ev.report)
    down = merge_counts(step.bytes_down, eval_down)
    add_site_bytes(sites, [out.report, ev.report], down)
    for s in step.lost:  # the SuperLink's own error reply is not a site's row
        sites.pop(s.site, None)
    reason = step.lost[0].reason if step.lost else "no reply before the timeout"
    for name in step.dropped:
        sites.setdefault(name, {})["dropped"] = reason
    return RoundRecord(
        round=server_round,
        train=step.train_columns(),
        eval=pooled_eval(ev),
        sites=sites,
        dropped=step.dropped,
        bytes_up=out.report.bytes + ev.report.bytes,
        bytes_down=sum(down.values()),
        skipped=out.arrays is None,
        skip_reason=f"secure aggregation: {out.skip_reason}" if out.skip_reason else "",
        round_time_s=timing[0],
        elapsed_s=timing[1],
    )
