"""``fedray report RUN_DIR ... [--out DIR]``: plots and a self-contained HTML report of one or
more run directories (:func:`orchestrator.report.build_report`).

Exit codes: 0 written; 2 a path is not a run directory or its metrics.jsonl is empty or garbled
(one ``config error:`` line naming the path); 1 the output could not be written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from orchestrator.commands.common import EXIT_OK, config_error, failed, parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray report",
        description="Plots (PNG) and a self-contained report.html of one or more run directories.",
        epilog="Default output: RUN_DIR/report for one run, ./report-<timestamp> for several.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to report on")
    p.add_argument("--out", metavar="DIR", help="output directory (created if missing)")
    return p


def main(argv: Sequence[str]) -> int:
    from orchestrator.report import build_report
    from orchestrator.report.load import ReportError

    ns = parse(parser(), argv)
    try:
        report = build_report(ns.runs, ns.out)
    except ReportError as e:
        return config_error(e)
    except OSError as e:  # the output directory: a file in the way, no permission, disk full
        where = e.filename or ns.out or "the output directory"
        return failed(f"cannot write {where}: {e.strerror or e}")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {report.html} ({len(report.pngs)} plots, also as PNG files next to it)")
    return EXIT_OK


__all__ = ["main", "parser"]
