"""A separate Ray head on 127.0.0.1 (``ray start --head --block``) with its dashboard, for tests
that talk to a cluster the way a user does (Job Submission API). Stopped by the PID of the
blocking ``ray start`` (it takes its children with it), then by its own process group: never
``ray stop``, which would stop every Ray of this user on the machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.processes.network import free_port


@dataclass
class RayHead:
    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]


def _dashboard_up(url: str) -> bool:
    """The job API answers (``/api/version`` answers earlier, before the job module is up) and
    the dashboard has seen the head node alive: a job submitted before that is refused with a
    dropped connection (on a loaded machine the raylet registers tens of seconds after the
    dashboard answers). The node list is the dashboard's own route, the one whose update
    records the head node for the job API."""
    try:
        for path in ("/api/version", "/api/jobs/"):
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as r:
                if r.status != 200:
                    return False
        with urllib.request.urlopen(f"{url}/nodes?view=hostNameList", timeout=5) as r:
            return bool(json.loads(r.read()).get("data", {}).get("hostNameList"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout_s: float = 90) -> Iterator[RayHead]:
    port, dash = free_port(), free_port()
    # A short private temp dir: Ray's socket paths must stay under ~107 characters, and
    # ray_current_cluster lands there instead of in the shared /tmp/ray.
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "RAY_TMPDIR": str(tmp),
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # `python` in job entrypoints
    }
    env.pop("RAY_API_SERVER_ADDRESS", None)
    head = subprocess.Popen(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={tmp}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _dashboard_up(url):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not come up (exit {head.poll()})")
            time.sleep(0.25)  # a local HTTP probe: cheap to repeat
        yield RayHead(f"127.0.0.1:{port}", url, tmp, env)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        # Anything of this head's session that outlived it (the group is ours alone).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
