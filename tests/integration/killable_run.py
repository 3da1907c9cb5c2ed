"""What tests/integration/test_kill_safety.py runs in a pytest of its own and kills mid-round
(not collected by the suite: the file name does not match ``test_*.py``).

One test holding what a test run starts: the shared embedded Ray (``ray_local``), a real
``fedray server`` (SuperLink, SuperExec, ServerApp) started through ``ManagedProcess`` as the
tests do, and a real ``fedray site`` (SuperNode, SuperExec, ClientApps) started with a plain
``subprocess.Popen`` as some tests do; the job has more rounds than the killer waits for.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.processes.managed import ManagedProcess
from orchestrator.processes.network import free_port

FEDRAY = str(Path(sys.executable).parent / "fedray")
DEMO = Path(__file__).parents[2] / "orchestrator" / "data" / "demo" / "tweets_sentiment.csv"
JOB = """\
task: {kind: classification, max_length: 32, labels: [negative, neutral, positive]}
model: {family: gpt2, n_layer: 1, n_head: 2, d_model: 64}
data: {tokenizer: {vocab_size: 1024}}
train: {micro_batch_size: 32, lr: 3.0e-3, seed: 7}
finetune: {mode: full, local_steps: 2}
strategy: {name: fedavg}
federation: {num_sites: 1, num_rounds: 1000, min_sites: 1, round_timeout_s: 600, eval_every: 1000}
"""


def test_a_federation_that_runs_until_killed(ray_local: str, tmp_path: Path) -> None:
    rows = [r for r in csv.DictReader(DEMO.open()) if r["topic"] == "apple"][:100]
    data = tmp_path / "site.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["topic", "label", "text"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "job.yaml").write_text(JOB)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = ManagedProcess(
        "fedray server",
        [
            FEDRAY,
            "server",
            str(tmp_path / "job.yaml"),
            f"run.dir={tmp_path / 'run'}",
            "--insecure",
            "--port",
            str(port),
        ],
        tmp_path / "server.log",
        env=env,
        cwd=tmp_path,
    ).start()
    log = (tmp_path / "site.log").open("wb")
    site = subprocess.Popen(
        [
            FEDRAY,
            "site",
            "--server",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
            "--insecure",
            "--num-threads",
            "1",
            "--retry-refused-s",
            "300",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    print(f"server {server.pid} site {site.pid}", flush=True)
    time.sleep(900)  # the killer acts long before; nothing here stops anything on purpose
    raise AssertionError("not killed")
