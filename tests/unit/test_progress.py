"""Driver-side progress (orchestrator/progress.py): a rich bar on a terminal whose redraws never
reach RUN_DIR/run.log while other lines still do; sparse plain lines without a terminal;
nothing for steps and rounds without a terminal (they print a line each already)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from orchestrator import progress
from orchestrator.progress import MetricsTail, Progress, choose_mode, round_info, track
from orchestrator.run_log import console_to_run_log


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_mode_follows_the_terminal_and_the_env_override(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert choose_mode(io.StringIO()) == "plain"
    assert choose_mode(FakeTerminal()) == "bar"
    monkeypatch.setenv("TERM", "dumb")
    assert choose_mode(FakeTerminal()) == "plain"
    monkeypatch.setenv(progress.ENV, "off")
    assert choose_mode(FakeTerminal()) == "off"
    monkeypatch.setenv(progress.ENV, "nonsense")  # ignored
    assert choose_mode(io.StringIO()) == "plain"


def test_plain_lines_are_sparse_and_a_short_task_prints_nothing(capsys):
    clock = Clock()
    with Progress("tokenizing", unit="documents", mode="plain", clock=clock) as p:
        for _ in range(1000):
            p.update(advance=1)
    assert capsys.readouterr().out == ""  # finished within one interval: silent

    with Progress("tokenizing", total=100, mode="plain", interval_s=30, clock=clock) as p:
        for i in range(100):
            clock.t += 1.0  # 100 s in all: a line at 30, 60 and 90 s, then the closing one
            p.update(advance=1, info=f"doc {i}")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "[fedray] tokenizing: 30/100 (30%), 30 s, doc 29"
    assert lines[-1] == "[fedray] tokenizing: 100/100 (100%), 100 s, doc 99, done"


def test_steps_and_rounds_print_nothing_without_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    clock = Clock()
    with Progress("steps", total=10, plain=False, clock=clock) as p:  # stdout: not a terminal
        assert p.mode == "off"
        for i in range(10):
            clock.t += 100
            p.update(completed=i + 1)
    assert capsys.readouterr().out == ""


def test_track_yields_everything_and_shows_nothing_for_an_unread_iterable(capsys):
    assert list(track(iter(range(5)), "reading", mode="plain")) == list(range(5))
    track(iter(range(5)), "never read", mode="plain")  # a generator never started
    assert list(track([], "empty", mode="plain")) == []
    assert capsys.readouterr().out == ""


def test_bar_redraws_stay_off_run_log_and_other_lines_go_above_it(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with console_to_run_log(tmp_path, verbose=False) as log:
        filt = sys.stdout
        with Progress("steps", total=3, mode="bar") as p:
            for i in range(3):
                p.update(completed=i + 1, info=f"loss {i}")
                print(f"step {i + 1}/3 | loss {i}")
                print("Started a local Ray instance.")  # noise: run.log only
            assert filt.console is not terminal  # lines go through the bar's console
        assert filt.console is terminal  # put back
        print("[fedray] done")
    text = log.read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("step ")] == [
        "step 1/3 | loss 0",
        "step 2/3 | loss 1",
        "step 3/3 | loss 2",
    ]
    assert "Started a local Ray instance." in text
    assert "━" not in text and "steps" not in text  # no bar redraw in run.log
    shown = terminal.getvalue()
    assert "step 3/3 | loss 2" in shown and "[fedray] done" in shown
    assert "Started a local Ray instance" not in shown


def test_round_info_shows_the_global_metric_and_round_time():
    rec = {"round": 2, "eval": {"accuracy": 0.8125, "macro-f1": 0.5}, "round_time_s": 3.21}
    assert round_info(rec) == "accuracy 0.8125  macro-f1 0.5  3.2 s/round"
    assert round_info({"round": 0, "eval": None}) == ""


def test_metrics_tail_reads_only_new_complete_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 0}) + "\n")
    seen: list[dict] = []
    tail = MetricsTail(path, seen.append, poll_s=0.01)
    with open(path, "a") as f:
        f.write(json.dumps({"round": 1}) + "\n" + "not json\n" + '{"round": 2')
    tail.drain()
    assert seen == [{"round": 1}]
    with open(path, "a") as f:
        f.write("}\n")
    tail.drain()
    assert seen == [{"round": 1}, {"round": 2}]


def test_round_progress_follows_the_metrics_file(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    rp = progress.round_progress(tmp_path, 3, mode="bar")
    with rp:
        with open(path, "a") as f:
            for r in range(4):
                f.write(json.dumps({"round": r, "eval": {"accuracy": 0.5 + r / 10}}) + "\n")
        rp.tail.drain()
        assert rp.bar.completed == 3 and rp.bar.info == "accuracy 0.8"
    resumed = progress.round_progress(tmp_path, 5, mode="bar")  # starts where the file ends
    assert resumed.bar.completed == 3
    off = progress.round_progress(tmp_path, 3, mode="plain")  # no terminal: no bar, no thread
    with off:
        assert off.bar.mode == "off"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
