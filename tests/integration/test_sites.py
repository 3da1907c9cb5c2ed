"""Real federated sites on 127.0.0.1: a Flower SuperLink with TLS and site authentication, one
SuperNode per site, each reading only its own CSV file. Every process is stopped by PID.

One uninterrupted 3-site run (``reference``) serves three checks: it completes with TLS + auth
and improves the model, a fourth site with an unregistered key is refused, and its final model
is what a server killed after round 1 and resumed must reproduce. A site killed mid-round
rejoins; central DP's ledger continues exactly across a server crash; a secure-aggregation round
equals the plain round; a site whose replies are malformed is rejected with a reason while the
rounds complete; the one-machine quickstart of docs/sites.md runs as written (its code blocks
are read from the file).

The federations run two at a time in the background (tests/integration/site_runs.py), started
when the module's first test asks for one; each test waits for its own and checks it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.client_app import app as client_app
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.processes import server_session
from orchestrator.processes.managed import ManagedProcess, stop_all, wait_until
from orchestrator.processes.network import free_port
from orchestrator.secagg.quantize import step
from tests.integration.malformed_site_app import MALFORMED_SITE
from tests.integration.site_runs import (
    DP_DELTA,
    DP_Z,
    NEEDS,
    ROOT,
    SECAGG_ROUND,
    SITES,
    Fed,
    Federations,
    Reference,
    final_weights,
    job,
    make_fed,
    metrics_rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_fed(tmp_path_factory.mktemp("sites"))


@pytest.fixture(scope="module")
def federations(fed: Fed, request: pytest.FixtureRequest) -> Iterator[Federations]:
    here = request.node.path
    wanted = {
        run
        for item in request.session.items
        if item.path == here
        for run in NEEDS.get(item.originalname, [])
    }
    runs = Federations(fed, wanted)
    try:
        yield runs
    finally:
        runs.close()


@pytest.fixture(scope="module")
def reference(federations: Federations) -> Reference:
    ref = federations.result("reference")
    assert isinstance(ref, Reference)
    return ref


def test_tls_auth_three_sites_complete_two_rounds_and_improve(reference: Reference) -> None:
    run = reference.run
    assert run.ok, run.status
    assert [r["round"] for r in run.metrics] == [0, 1, 2]
    for r in run.metrics[1:]:
        assert r["train"]["sites-accepted"] == 3, r
        assert r["dropped"] == []
        assert set(r["sites"]) == set(SITES)
    # Each site reports what each message cost it before its handler ran. Its warm worker
    # imported torch and transformers once, so a message's own process stays cheap (without
    # the worker, about 5-7 CPU-s each: bench/bench_deploy_vs_sim.py).
    for r in run.metrics[1:]:
        for name in SITES:
            row = r["sites"][name]
            assert 0 < row["overhead-s"] < 120 and 0 < row["overhead-cpu-s"] < 4, row
            # The handler's own steps: loading, tokenizing, training (wall seconds).
            assert row["train-s"] > 0 and row["setup-s"] >= 0 and row["tokenize-s"] >= 0, row
    for n in SITES:
        row = run.metrics[-1]["sites"][n]
        assert "eval-overhead-s" in row and row["eval-evaluate-s"] > 0, row
    first, last = run.metrics[0]["eval"], run.metrics[-1]["eval"]
    # The tiny model's loss is noisy over 2 rounds; accuracy and macro-F1 must both improve.
    assert last["accuracy"] > first["accuracy"], (first, last)
    assert last["macro-f1"] > first["macro-f1"], (first, last)
    assert (run.run_dir / "export" / "config.json").is_file()
    assert (run.run_dir / "checkpoints" / "round-0002" / "state.json").is_file()


def test_unregistered_site_is_refused_and_run_completes(reference: Reference) -> None:
    intruder = reference.intruder
    assert intruder.returncode not in (None, 0)
    assert "Failed to activate SuperNode" in intruder.log_tail(80)
    assert "No SuperNode found with the given public key" in reference.superlink_log
    assert reference.run.ok
    assert all("intruder" not in r["sites"] for r in reference.run.metrics)


def test_site_killed_mid_round_round_completes_and_site_rejoins(
    fed: Fed, federations: Federations
) -> None:
    run = federations.result("rejoin")
    assert isinstance(run, server_session.ServerRun)
    assert run.ok, run.status
    r1, r2 = run.metrics[1], run.metrics[2]
    assert r1["train"]["sites-accepted"] == 2, r1
    assert r1["dropped"] == ["s2"], r1
    assert not r1["skipped"]
    assert r2["train"]["sites-accepted"] == 3, r2  # s2 rejoined
    assert "s2" in r2["sites"]
    table = (fed.root / "dropout" / "server" / "logs" / "run.log").read_text()
    assert "no update from: s2" in table
    assert "dropped" in r1["sites"]["s2"]
    assert set(r1["sites"]) == set(SITES)  # no row for the SuperLink's own error reply


def test_server_killed_after_round_1_resumes_to_the_same_model(
    reference: Reference, federations: Federations
) -> None:
    run_dir = federations.result("resumed")
    assert isinstance(run_dir, Path)
    assert [r["round"] for r in metrics_rows(run_dir)] == [0, 1, 2]
    got, want = final_weights(run_dir), final_weights(reference.run.run_dir)
    assert set(got) == set(want)
    # Bit for bit: site training is seeded and single-threaded, and the server's float64 sum
    # makes the aggregate independent of the order the replies happened to arrive in.
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_central_dp_across_real_sites_ledger_continues_exactly_after_a_server_crash(
    federations: Federations,
) -> None:
    """DP-FedAvg (central) with real sites: the server crashes after round 1, and the resumed run
    charges round 2 on top of round 1's epsilon, no round charged twice or forgotten."""
    from orchestrator.federated import checkpoint
    from orchestrator.federated.ledger import central_epsilon

    run_dir = federations.result("dp-resumed")
    assert isinstance(run_dir, Path)
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    ledger = checkpoint.latest(run_dir).state["privacy_ledger"]["rounds"]
    assert [r["round"] for r in ledger] == [1, 2]
    pairs = [(int(r["sampled"]), int(r["population"])) for r in ledger]
    assert all(n == len(SITES) and 2 <= k <= n for k, n in pairs), pairs
    # Each round's epsilon is the accountant's for every round so far, round 1 included.
    assert rows[1]["epsilon"] == pytest.approx(central_epsilon(DP_Z, pairs[:1], DP_DELTA), rel=1e-9)
    assert rows[2]["epsilon"] == pytest.approx(central_epsilon(DP_Z, pairs, DP_DELTA), rel=1e-9)
    assert rows[2]["epsilon"] > rows[1]["epsilon"]
    assert rows[2]["privacy"]["rounds_charged"] == 2
    assert (run_dir / "export" / "model.safetensors").is_file()


# ---- docs/sites.md quickstart, as written ------------------------------------------------------

QUICKSTART_PORT = "9092"
SMALL_JOB = "federation.num_rounds=1 partition.max_examples_per_site=60 finetune.local_steps=2"
"""Added after `fedray server` (the docs say so): one short round instead of the demo's four."""


def quickstart_blocks() -> tuple[list[str], str, list[str]]:
    """The ```bash blocks of docs/sites.md's Quickstart: (setup blocks, the server command, the
    site commands)."""
    docs = (ROOT / "docs" / "sites.md").read_text()
    section = docs.split("## Quickstart", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    servers = [b for b in blocks if b.startswith("fedray server ")]
    sites = [b for b in blocks if b.startswith("fedray site ")]
    setup = [b for b in blocks if b not in servers and b not in sites]
    assert len(servers) == 1 and len(sites) == 2 and setup, blocks
    return setup, servers[0], sites


def _gone(pid: int) -> bool:
    """Exited (a zombie left for a non-reaping init in containers counts as exited)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def command_argv(block: str, port: int) -> list[str]:
    """One documented command (continuation lines joined, comments dropped), on ``port``."""
    argv = shlex.split(block.replace("\\\n", " "), comments=True)
    return [a.replace(QUICKSTART_PORT, str(port)) for a in argv]


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    setup, server_cmd, site_cmds = quickstart_blocks()
    port = free_port()
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "TMPDIR": str(tmp_path),  # fedray site's default state dir
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",  # the test reads the server's output as it comes
    }
    for block in setup:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    server_argv = command_argv(server_cmd, port)
    assert server_argv[:2] == ["fedray", "server"] and f"--port {port}" in shlex.join(server_argv)
    server_argv[2:2] = SMALL_JOB.split()
    logs = tmp_path / "logs"
    procs: list[ManagedProcess] = []
    try:
        server = ManagedProcess("server", server_argv, logs / "server.log", env=env, cwd=tmp_path)
        procs.append(server.start())
        wait_until(lambda: "registered sites" in server.log_tail(80), 180, "keys", watch=[server])
        for i, cmd in enumerate(site_cmds):
            argv = command_argv(cmd, port)
            assert f"127.0.0.1:{port}" in argv and "--port" not in argv  # free local ports
            procs.append(
                ManagedProcess(f"site {i}", argv, logs / f"site-{i}.log", env=env, cwd=tmp_path)
            )
            procs[-1].start()
        deadline = time.monotonic() + 480
        while server.alive() and time.monotonic() < deadline:
            for p in procs[1:]:
                p.check_alive()  # a site that dies (e.g. a port clash) fails the test at once
            time.sleep(0.2)
        assert server.returncode == 0, server.log_tail(60)
        # The docs say: stop each site with Ctrl-C. Nothing it started may survive. (Both get
        # their Ctrl-C first, then each is checked: they shut down side by side.)
        families: dict[ManagedProcess, list] = {}
        for site_proc in procs[1:]:
            families[site_proc] = site_proc.descendants()
            assert families[site_proc], site_proc.log_tail(30)  # flower-supernode (+ superexec)
            site_proc.popen.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        for site_proc, family in families.items():
            assert site_proc.popen.wait(timeout=60) == 130  # type: ignore[union-attr]
            assert not [p.pid for p in family if not _gone(p.pid)], site_proc.log_tail(30)
    finally:
        stop_all(procs)
    run_dir = tmp_path / "runs" / "fed1"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["train"]["sites-accepted"] == 2, rows[1]
    assert set(rows[1]["sites"]) == {"site-a", "site-b"}
    assert (run_dir / "export" / "config.json").is_file()
    assert "finished:completed" in server.log_tail(40)


# ---- a site that sends malformed replies ----------------------------------------------------------


def test_malformed_replies_are_rejected_and_rounds_complete(federations: Federations) -> None:
    """The server rejects mallory's update with a reason each round and completes the run with
    the other two sites (:func:`run_malformed`)."""
    run = federations.result("malformed")
    assert isinstance(run, server_session.ServerRun)
    assert run.ok, run.status
    assert [r["round"] for r in run.metrics] == [0, 1, 2]
    for r in run.metrics[1:]:
        assert r["train"]["sites-accepted"] == 2, r
        assert not r["skipped"]
        reason = r["sites"][MALFORMED_SITE].get("rejected")
        assert reason and isinstance(reason, str), r["sites"]
        for honest in SITES[:2]:
            assert "rejected" not in r["sites"][honest], r["sites"][honest]
    assert "eval-error" not in run.metrics[-1]["sites"][MALFORMED_SITE]  # it evaluates fine
    assert (run.run_dir / "export" / "config.json").is_file()


def test_secure_round_across_real_sites_equals_plain_round(
    fed: Fed, federations: Federations
) -> None:
    """The secure round's model equals the same round without secure aggregation (computed in
    this process on the same files) up to quantization."""
    run = federations.result("secagg")
    assert isinstance(run, server_session.ServerRun)
    assert run.ok, run.status
    row = run.metrics[1]
    assert not row["skipped"] and row["train"]["sites-accepted"] == 3, row
    assert set(row["sites"]) == set(SITES)

    ensure_task_identity()
    nodes = [{"data-path": str(fed.data[n]), "site-name": n, "num-threads": 1} for n in SITES]
    run_federated(LocalGrid(client_app, nodes), job(fed, *SECAGG_ROUND), fed.root / "plain")
    a = load_file(str(fed.root / "plain" / "export" / "model.safetensors"))
    b = load_file(str(run.run_dir / "export" / "model.safetensors"))
    tol = step(1.0, 3) + 1e-5  # quantization + float32 differences between processes
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=tol, rtol=0, err_msg=k)
