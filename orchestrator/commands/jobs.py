"""``fedray jobs list | logs ID [--follow] | stop ID [--wait]``: jobs on a Ray cluster
(:mod:`orchestrator.jobs`).

Exit codes: 0 done; ``logs --follow`` returns the job's own (0 succeeded, 1 failed or stopped);
2 a dashboard that does not answer (``config error:``); 1 ``stop --wait`` that timed out;
130 after Ctrl-C detaches from ``logs --follow`` (the job keeps running).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.commands.common import EXIT_OK, failed, interrupted, parse


def parser() -> argparse.ArgumentParser:
    from orchestrator.jobs import DEFAULT_DASHBOARD

    p = argparse.ArgumentParser(prog="fedray jobs", description="jobs on a Ray cluster")
    p.add_argument("--address", help=f"dashboard URL (default {DEFAULT_DASHBOARD})")
    sub = p.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="all jobs, newest first")
    logs = sub.add_parser("logs", help="a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    stop = sub.add_parser("stop", help="stop a job (SIGTERM: fedray checkpoints stay resumable)")
    stop.add_argument("job_id")
    stop.add_argument("--wait", action="store_true", help="wait until it has stopped")
    for sp in (listing, logs, stop):  # --address also after the action
        sp.add_argument("--address", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str]) -> int:
    from orchestrator.jobs import connect, dashboard_address, format_jobs

    ns = parse(parser(), argv, intermixed=False)  # subcommands
    client = connect(dashboard_address(ns.address))
    if ns.action == "list":
        print(format_jobs(client.list_jobs()))
        return EXIT_OK
    if ns.action == "logs":
        return _logs(client, ns.job_id, ns.follow)
    return _stop(client, ns.job_id, ns.wait)


def _logs(client: Any, job_id: str, follow: bool) -> int:
    from orchestrator.jobs import follow_logs, status_exit_code

    if not follow:
        sys.stdout.write(client.get_job_logs(job_id))
        return EXIT_OK
    try:
        return status_exit_code(follow_logs(client, job_id))
    except KeyboardInterrupt as e:
        return interrupted(e, f"detached; {job_id} keeps running")


def _stop(client: Any, job_id: str, wait: bool) -> int:
    from orchestrator.jobs import TERMINAL

    stopped = client.stop_job(job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
    if wait:
        deadline = time.monotonic() + 120
        while str(client.get_job_status(job_id)) not in TERMINAL:
            if time.monotonic() > deadline:
                return failed(f"{job_id}: still not stopped after 120 s")
            time.sleep(1)
        print(f"{job_id}: {client.get_job_status(job_id)}")
    return EXIT_OK


__all__ = ["main", "parser"]
