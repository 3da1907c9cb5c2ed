"""The real-sites federations that tests/integration/test_sites.py checks, and the pool that runs
them two at a time in the background (:class:`Federations`). Each is bound by process start-ups,
polls and heartbeats (a rejoining site waits about a minute for its dead session to expire) more
than by the two cores, so two side by side take far less than two one after the other."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import load_config, to_yaml
from orchestrator.processes import credentials, server_session, site
from orchestrator.processes.launch import flower_env
from orchestrator.processes.managed import ManagedProcess, stop_all, wait_until
from orchestrator.processes.network import free_port
from tests.integration.malformed_site_app import MALFORMED_SITE

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


def make_fed(root: Path) -> Fed:
    """Keys (a test CA, three sites and an intruder), each site's CSV (300 rows of one topic)
    and the job file, under ``root``."""
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


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@dataclass
class Reference:
    run: server_session.ServerRun
    intruder: ManagedProcess
    superlink_log: str


@contextmanager
def served(fed: Fed, name: str) -> Iterator[tuple[server_session.ServerSession, Path, list]]:
    """A server session (SuperLink with TLS, the three sites' keys registered) for the run
    ``fed.root / name``; the site processes the caller adds to the list are stopped with it."""
    run_dir = fed.root / name
    opts = server_session.ServerOptions(port=free_port(), certs=fed.pki.ca_cert.parent)
    procs: list[ManagedProcess] = []
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open()
        session.register([fed.keys[n].public for n in SITES])
        try:
            yield session, run_dir, procs
        finally:
            stop_all(procs)


def run_reference(fed: Fed) -> Reference:
    """An uninterrupted 2-round run: 3 registered sites + 1 site whose key is not registered."""
    with served(fed, "reference") as (session, run_dir, procs):
        procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES]
        intruder = start_site(fed, "intruder", session.address, run_dir / "sites")
        procs.append(intruder)
        run = session.run(to_yaml(job(fed)), run_dir)
        superlink_log = session.superlink.proc.log_path.read_text()  # type: ignore[union-attr]
    return Reference(run, intruder, superlink_log)


def run_rejoin(fed: Fed) -> server_session.ServerRun:
    """s2 is killed (SuperNode and its ClientApp) as soon as its round-1 training starts, and
    comes back at once as `fedray site`; the server refuses it until the dead session expires."""
    with served(fed, "dropout") as (session, run_dir, procs):
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
    with served(fed, "malformed") as (session, run_dir, procs):
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


SECAGG_ROUND = ("federation.num_rounds=1", "strategy.weighting=uniform", "federation.min_sites=3")


def run_secagg(fed: Fed) -> server_session.ServerRun:
    """One round with ``privacy.secure_aggregation=true`` (four exchanges per site: each a fresh
    ClientApp process, secrets kept in the node's Context.state)."""
    secure = job(fed, *SECAGG_ROUND, "privacy.secure_aggregation=true")
    with served(fed, "secagg") as (session, run_dir, procs):
        procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES]
        return session.run(to_yaml(secure), run_dir)


RUNS: dict[str, Callable[[Fed], object]] = {
    # Started in this order, two at a time: the rejoin (mostly a wait for a heartbeat to lapse)
    # beside the reference, then each crash + resume, secure aggregation, malformed replies.
    "reference": run_reference,
    "rejoin": run_rejoin,
    "resumed": lambda fed: crash_after_round_1_and_resume(fed, fed.root / "resumed"),
    "dp-resumed": run_dp_resumed,
    "secagg": run_secagg,
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
    "test_secure_round_across_real_sites_equals_plain_round": ["secagg"],
}
AT_ONCE = 2


class Federations:
    """The runs this session's selected tests need, started at once in the background, at most
    ``AT_ONCE`` at a time; :meth:`result` waits for one (and re-raises its failure)."""

    def __init__(self, fed: Fed, wanted: Iterable[str]) -> None:
        wanted = set(wanted)
        self.pool = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="federation")
        self.runs: dict[str, Future] = {
            name: self.pool.submit(run, fed) for name, run in RUNS.items() if name in wanted
        }

    def result(self, name: str) -> object:
        return self.runs[name].result(timeout=1200)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
