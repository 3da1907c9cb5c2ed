"""Real federated sites on 127.0.0.1: a Flower SuperLink with TLS and site authentication, one
SuperNode per site, each reading only its own CSV file. Every process is stopped by PID.

One uninterrupted 3-site run (``reference``) serves three checks: it completes with TLS + auth
and improves the model, a fourth site with an unregistered key is refused, and its final model
is what a server killed after round 1 and resumed must reproduce. The one-machine quickstart of
docs/sites.md runs as written (its code blocks are read from the file), and a site whose replies
are malformed is rejected with a reason while the rounds complete.

The module's federations run two at a time in the background (:class:`Federations`), started
when the module's first test asks for one: each is bound by process start-ups, polls and
heartbeats (a rejoining site waits about a minute for its dead session to expire) more than by
the two cores, and each test waits for its own and checks it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import load_config, to_yaml
from orchestrator.processes import credentials, server_session, site
from orchestrator.processes.launch import flower_env
from orchestrator.processes.managed import ManagedProcess, stop_all, wait_until
from orchestrator.processes.network import free_port
from tests.integration.malformed_site_app import MALFORMED_SITE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SITES = ("s0", "s1", "s2")
# eval_every: 2 - the sites evaluate before round 1 and after round 2, not after round 1: no
# check here needs that evaluation, and each exchange costs every site a fresh ClientApp process.
JOB = """\
task: {kind: classification, max_length: 32, labels: [negative, neutral, positive]}
model: {family: gpt2, n_layer: 1, n_head: 2, d_model: 64}
data: {tokenizer: {vocab_size: 1024}}
train: {micro_batch_size: 32, lr: 3.0e-3, seed: 7}
finetune: {mode: full, local_steps: 5}
strategy: {name: fedadam}
federation: {num_sites: 3, num_rounds: 2, min_sites: 2, round_timeout_s: 120, eval_every: 2}
partition: {eval_fraction: 0.2}
"""


@dataclass
class Fed:
    root: Path
    pki: credentials.TestPKI
    keys: dict[str, credentials.SiteKey]
    data: dict[str, Path]
    job_yaml: Path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("sites")
    pki = credentials.make_test_pki(root / "pki")
    keys = {n: credentials.make_site_key(root / "keys" / n) for n in (*SITES, "intruder")}
    demo = Path(__file__).parents[2] / "orchestrator" / "data" / "demo" / "tweets_sentiment.csv"
    rows = list(csv.DictReader(demo.open()))
    data = {}
    for name, topic in zip(SITES, ("airline", "apple", "coachella"), strict=True):
        data[name] = root / "data" / f"{name}.csv"
        data[name].parent.mkdir(exist_ok=True)
        with data[name].open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["topic", "label", "text"])
            w.writeheader()
            w.writerows([r for r in rows if r["topic"] == topic][:300])
    (root / "job.yaml").write_text(JOB)
    return Fed(root, pki, keys, data, root / "job.yaml")


def start_site(
    fed: Fed, name: str, server: str, log_dir: Path, key: str | None = None
) -> ManagedProcess:
    opts = site.SiteOptions(
        server=server,
        data=fed.data.get(name, fed.data["s0"]),
        name=name,
        key=fed.keys[key or name].private,
        root_cert=fed.pki.ca_cert,
        port=free_port(),
        num_threads=1,
    )
    return site.site_process(opts, log_dir / f"{name}.log", log_dir / name).start()


def fedray_site(fed: Fed, name: str, server: str, log_dir: Path) -> ManagedProcess:
    """The `fedray site` command itself (retries while the server refuses it)."""
    argv = [
        str(Path(sys.executable).parent / "fedray"),
        "site",
        "--server",
        server,
        "--data",
        str(fed.data[name]),
        "--name",
        name,
        "--key",
        str(fed.keys[name].private),
        "--root-cert",
        str(fed.pki.ca_cert),
        "--port",
        str(free_port()),
        "--num-threads",
        "1",
        "--state-dir",
        str(log_dir / f"{name}-cli"),
        "--retry-refused-s",
        "150",
    ]
    return ManagedProcess(f"fedray site {name}", argv, log_dir / f"{name}-cli.log").start()


def job(fed: Fed, *overrides: str) -> FederatedJob:
    return load_config(FederatedJob, str(fed.job_yaml), list(overrides))


def final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


@dataclass
class Reference:
    run: server_session.ServerRun
    intruder: ManagedProcess
    superlink_log: str


def run_reference(fed: Fed) -> Reference:
    """An uninterrupted 2-round run: 3 registered sites + 1 site whose key is not registered."""
    run_dir = fed.root / "reference"
    opts = server_session.ServerOptions(port=free_port(), certs=fed.pki.ca_cert.parent)
    procs: list[ManagedProcess] = []
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open()
        session.register([fed.keys[n].public for n in SITES])
        try:
            procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES]
            intruder = start_site(fed, "intruder", session.address, run_dir / "sites")
            procs.append(intruder)
            run = session.run(to_yaml(job(fed)), run_dir)
            superlink_log = session.superlink.proc.log_path.read_text()  # type: ignore[union-attr]
        finally:
            stop_all(procs)
    return Reference(run, intruder, superlink_log)


def run_rejoin(fed: Fed) -> server_session.ServerRun:
    """s2 is killed (SuperNode and its ClientApp) as soon as its round-1 training starts, and
    comes back at once as `fedray site`; the server refuses it until the dead session expires."""
    run_dir = fed.root / "dropout"
    opts = server_session.ServerOptions(port=free_port(), certs=fed.pki.ca_cert.parent)
    procs: list[ManagedProcess] = []
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open()
        session.register([fed.keys[n].public for n in SITES])
        try:
            procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES[:2]]
            victim = start_site(fed, "s2", session.address, run_dir / "sites")
            procs.append(victim)
            box: dict[str, server_session.ServerRun] = {}
            # Round 2 follows round 1's training at once (no evaluation between them) and waits
            # for s2 to rejoin: give that wait room (it ends as soon as all three are online).
            cfg = to_yaml(job(fed, "federation.round_timeout_s=60", "federation.rejoin_wait_s=120"))
            server = threading.Thread(target=lambda: box.update(run=session.run(cfg, run_dir)))
            server.start()
            wait_until(
                lambda: "Receiving: train message" in victim.log_path.read_text(),
                300,
                "s2 to receive its round-1 train message",
                watch=[victim],
            )
            victim.kill_tree()
            procs.append(fedray_site(fed, "s2", session.address, run_dir / "sites"))
            server.join(timeout=540)
            assert not server.is_alive(), "server run did not finish"
        finally:
            stop_all(procs)
    return box["run"]


def crash_after_round_1_and_resume(fed: Fed, run_dir: Path, *overrides: str) -> Path:
    """`fedray server` with 3 real sites; the whole server process tree is killed once round 1's
    checkpoint exists, then `fedray server --resume` finishes the run (exit 0). The run dir."""
    port = free_port()
    fedray = str(Path(sys.executable).parent / "fedray")
    common = [
        "--certs",
        str(fed.pki.ca_cert.parent),
        "--site-keys",
        *[str(fed.keys[n].public) for n in SITES],
        "--port",
        str(port),
    ]
    env = flower_env(fed.root / "unused-flwr-home")
    logs = run_dir.parent / "logs" / run_dir.name
    procs: list[ManagedProcess] = []
    try:
        server = ManagedProcess(
            "fedray server",
            [fedray, "server", str(fed.job_yaml), f"run.dir={run_dir}", *overrides, *common],
            logs / "server-1.log",
            env=env,
        ).start()
        procs.append(server)
        address = f"127.0.0.1:{port}"
        wait_until(
            lambda: "registered sites" in server.log_tail(50), 120, "registration", watch=[server]
        )
        procs += [start_site(fed, n, address, run_dir / "sites") for n in SITES]
        wait_until(
            lambda: (run_dir / "checkpoints" / "round-0001" / "state.json").exists(),
            400,
            "round 1 checkpoint",
            watch=[server],
        )
        server.kill_tree()  # the server machine crashes: SuperLink, ServerApp, all of it
        assert not (run_dir / "export").exists()
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["round"] for x in lines] == [0, 1]

        resumed = ManagedProcess(
            "fedray server --resume",
            [fedray, "server", "--resume", str(run_dir), *common],
            logs / "server-2.log",
            env=env,
        ).start()
        procs.append(resumed)
        deadline = time.monotonic() + 400
        while resumed.alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # a cheap check: notice the exit within 0.2 s, not 1 s
        assert resumed.returncode == 0, resumed.log_tail(60)
    finally:
        stop_all(procs)
    return run_dir


DP_Z, DP_DELTA = 1.5, 1e-2


def run_dp_resumed(fed: Fed) -> Path:
    """DP-FedAvg (central) with real sites, crashed after round 1 and resumed."""
    return crash_after_round_1_and_resume(
        fed,
        fed.root / "dp-resumed",
        "privacy.mode=central",
        f"privacy.noise_multiplier={DP_Z}",
        "privacy.clip_norm=0.5",
        f"privacy.delta={DP_DELTA}",
        "strategy.weighting=uniform",
    )


def run_malformed(fed: Fed) -> server_session.ServerRun:
    """Sites s0, s1 run fedray's ClientApp; the third, named mallory, replaces one array's payload
    with garbage bytes (tests/integration/malformed_site_app.py, sent to every site as the app's
    ClientApp component)."""
    run_dir = fed.root / "malformed"
    opts = server_session.ServerOptions(port=free_port(), certs=fed.pki.ca_cert.parent)
    procs: list[ManagedProcess] = []
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open()
        session.register([fed.keys[n].public for n in SITES])
        try:
            procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES[:2]]
            mallory = site.SiteOptions(
                server=session.address,
                data=fed.data["s2"],
                name=MALFORMED_SITE,
                key=fed.keys["s2"].private,
                root_cert=fed.pki.ca_cert,
                num_threads=1,
            )
            log_dir = run_dir / "sites"
            procs.append(
                site.site_process(mallory, log_dir / "mallory.log", log_dir / "mallory").start()
            )
            return session.run(
                to_yaml(job(fed, "finetune.local_steps=2")),
                run_dir,
                clientapp="tests.integration.malformed_site_app:app",
            )
        finally:
            stop_all(procs)


RUNS: dict[str, Callable[[Fed], object]] = {
    # Started in this order, two at a time: the rejoin (mostly a wait for a heartbeat to lapse)
    # beside the reference, then each crash + resume, then the malformed-replies run.
    "reference": run_reference,
    "rejoin": run_rejoin,
    "resumed": lambda fed: crash_after_round_1_and_resume(fed, fed.root / "resumed"),
    "dp-resumed": run_dp_resumed,
    "malformed": run_malformed,
}
NEEDS = {
    "test_tls_auth_three_sites_complete_two_rounds_and_improve": ["reference"],
    "test_unregistered_site_is_refused_and_run_completes": ["reference"],
    "test_site_killed_mid_round_round_completes_and_site_rejoins": ["rejoin"],
    "test_server_killed_after_round_1_resumes_to_the_same_model": ["reference", "resumed"],
    "test_central_dp_across_real_sites_ledger_continues_exactly_after_a_server_crash": [
        "dp-resumed"
    ],
    "test_malformed_replies_are_rejected_and_rounds_complete": ["malformed"],
}
AT_ONCE = 2


class Federations:
    """The runs this session's selected tests need, started at once in the background, at most
    ``AT_ONCE`` at a time; :meth:`result` waits for one (and re-raises its failure)."""

    def __init__(self, fed: Fed, wanted: set[str]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="federation")
        self.runs: dict[str, Future] = {
            name: self.pool.submit(run, fed) for name, run in RUNS.items() if name in wanted
        }

    def result(self, name: str) -> object:
        return self.runs[name].result(timeout=1200)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


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
    assert all("eval-overhead-s" in run.metrics[-1]["sites"][n] for n in SITES)
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


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
