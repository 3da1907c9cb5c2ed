"""Quieting Ray Train's per-report echo on workers (orchestrator.pretrain.loop): no Ray started,
and Ray's source is read as text, not imported."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from orchestrator.pretrain.loop import REPORT_ECHO_PREFIX, DropReportEcho, quiet_ray_train_reports


@pytest.fixture
def worker_like_loggers() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A parent logger with a console-like handler, standing in for a worker's root logger (which
    Ray Train configures at INFO); children propagate into it as Ray's loggers do into root."""
    parent = logging.getLogger("fedray_test_root")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s|%(levelname)s|%(message)s"))
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    parent.propagate = False
    yield parent, out
    parent.removeHandler(handler)


def test_echo_dropped_other_records_kept(worker_like_loggers):
    parent, out = worker_like_loggers
    quiet_ray_train_reports([parent])
    # Ray 2.55 names this logger after its file path; any child name propagates the same way.
    echo_logger = logging.getLogger("fedray_test_root.site-packages/ray/train/v2/context.py")
    echo_logger.info(f"{REPORT_ECHO_PREFIX} 3: _TrainingReport(metrics={{'loss': 1.0}})")
    echo_logger.info("Setting up the process group")
    parent.info("a line of our own")
    echo_logger.warning(f"{REPORT_ECHO_PREFIX} 4 took long")  # warnings always pass
    lines = out.getvalue().splitlines()
    assert not any("_TrainingReport" in line for line in lines), lines
    assert any(line.endswith("Setting up the process group") for line in lines)
    assert any(line.endswith("a line of our own") for line in lines)
    assert any("WARNING" in line and REPORT_ECHO_PREFIX in line for line in lines)


def test_installing_twice_adds_one_filter(worker_like_loggers):
    parent, _ = worker_like_loggers
    quiet_ray_train_reports([parent])
    quiet_ray_train_reports([parent])
    for handler in parent.handlers:
        assert sum(isinstance(f, DropReportEcho) for f in handler.filters) == 1


def test_ray_still_logs_the_echo_we_filter():
    """Pins the Ray behaviour the filter relies on. If this fails, Ray changed how (or whether) it
    echoes report() payloads: run a short `fedray pretrain` and check whether
    "Reporting training result" lines are back in the console, then adapt REPORT_ECHO_PREFIX or
    quiet_ray_train_reports (or drop both if Ray stopped echoing)."""
    spec = find_spec("ray")  # locates the installed package without importing it
    assert spec is not None and spec.submodule_search_locations
    train_v2 = Path(spec.submodule_search_locations[0]) / "train" / "v2"
    echo = re.compile(r"logger\.info\(\s*f\"" + re.escape(REPORT_ECHO_PREFIX) + r" ")
    hits = [p for p in train_v2.rglob("*.py") if echo.search(p.read_text(encoding="utf-8"))]
    assert hits, f"no logger.info(f'{REPORT_ECHO_PREFIX} ...') found under {train_v2}"
