"""``fedray jobs list | logs ID [--follow] | stop ID``: jobs on a Ray cluster's Job Submission API.

    fedray jobs list --address http://HEAD:8265
    fedray jobs logs raysubmit_XXXX --follow
    fedray jobs stop raysubmit_XXXX

The address is the head's dashboard URL (``--address``, else ``$RAY_API_SERVER_ADDRESS``, else an
``http(s)://`` ``$RAY_ADDRESS``, else ``http://127.0.0.1:8265``). Everything goes through
:class:`ray.job_submission.JobSubmissionClient` (Ray's supported SDK). The client has no timeout
of its own, so the dashboard is probed first (bounded) and a dead address is exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from orchestrator.config.loader import ConfigError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
PROBE_TIMEOUT_S = 10.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def dashboard_address(arg: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The Job Submission API URL to use (see the module docstring for the order)."""
    environ = os.environ if environ is None else environ
    env_ray = environ.get("RAY_ADDRESS", "")
    address = (
        arg
        or environ.get("RAY_API_SERVER_ADDRESS")
        or (env_ray if env_ray.startswith(("http://", "https://")) else None)
        or DEFAULT_DASHBOARD
    )
    if not address.startswith(("http://", "https://")):
        raise ConfigError(
            f"--address {address!r}: expected the head's dashboard URL, e.g. http://HEAD:8265 "
            "(the Job Submission API; not the GCS HOST:6379 or a ray:// address).",
            "--address",
        )
    return address.rstrip("/")


def probe_dashboard(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """``GET /api/version`` within ``timeout_s``; a ConfigError (exit 2) when nothing answers."""
    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=timeout_s) as r:
            info = json.loads(r.read(65536))
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        raise ConfigError(
            f"--address {address}: no Ray dashboard answers there ({e}; waited up to "
            f"{timeout_s:g} s). Start the head with `ray start --head --dashboard-host 0.0.0.0` "
            "(port 8265 by default), or forward it: `ssh -L 8265:localhost:8265 HEAD` / "
            "`kubectl port-forward svc/fedray-head-svc 8265`.",
            "--address",
        ) from e
    if not isinstance(info, dict) or "ray_version" not in info:
        raise ConfigError(f"--address {address}: answered, but not as a Ray dashboard", "--address")
    return info


def connect(address: str) -> JobSubmissionClient:
    """A JobSubmissionClient for ``address``, after a bounded probe of the dashboard."""
    info = probe_dashboard(address)  # before importing ray: a dead address fails in a second
    import ray
    from ray.job_submission import JobSubmissionClient

    if info["ray_version"] != ray.__version__:
        print(
            f"[fedray] warning: the cluster runs Ray {info['ray_version']}, this machine "
            f"{ray.__version__}; fedray pins ray=={ray.__version__}",
            file=sys.stderr,
        )
    return JobSubmissionClient(address)


async def _tail(client: JobSubmissionClient, job_id: str, out: IO[str]) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def follow_logs(client: JobSubmissionClient, job_id: str, out: IO[str] | None = None) -> str:
    """Stream ``job_id``'s logs until it ends; returns its final status (e.g. ``SUCCEEDED``)."""
    asyncio.run(_tail(client, job_id, out or sys.stdout))
    # The log stream can close a moment before the status turns terminal.
    deadline = time.monotonic() + 30
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(client.get_job_status(job_id))
    return status


def status_exit_code(status: str) -> int:
    """0 for a job that succeeded, 1 otherwise (failed, stopped, still running)."""
    return 0 if status == "SUCCEEDED" else 1


def format_jobs(jobs: Sequence[Any]) -> str:
    """One line per job, newest first: id, status, start time, fedray run dir or entrypoint."""
    rows = ["SUBMISSION ID                     STATUS     STARTED              RUN / ENTRYPOINT"]
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000))
            if j.start_time
            else "-"
        )
        what = (j.metadata or {}).get("fedray_run_dir") or j.entrypoint
        rows.append(f"{j.submission_id or j.job_id!s:<33} {j.status!s:<10} {started:<20} {what}")
    return "\n".join(rows)


__all__ = [
    "connect",
    "dashboard_address",
    "follow_logs",
    "format_jobs",
    "probe_dashboard",
    "status_exit_code",
]
