"""A job command stopped by SIGTERM or SIGHUP unwinds like Ctrl-C (clean-up runs) and exits
128 + N; nothing is killed by name."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration  # real subprocesses and signals

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from orchestrator import cli

    def fake():
        from orchestrator.config.federated import FederatedJob

        def run(job):
            try:
                print("running", flush=True)
                time.sleep(60)
            finally:
                print("cleaned up", flush=True)

        return FederatedJob, "simulate-demo", run, lambda job: {}

    cli.COMMANDS["fake"] = ("a job that waits", fake)
    sys.exit(cli.main(["fake"]))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_unwinds_the_job_and_exits_128_plus_n(sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "cleaned up" in out
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err
