"""Per-round wall time: Flower's deployment engine (real processes) vs its simulation engine.

    python bench/bench_deploy_vs_sim.py                # 3 sites, 3 rounds, the demo task
    python bench/bench_deploy_vs_sim.py --rounds 2 --skip-sim

Same job both ways (the ``simulate-demo`` preset with 3 sites; the deployment's site files are
the simulation's partitions written to CSV, so each site trains on the same number of examples):

- simulation: ``fedray simulate`` in-process (Ray actors host the ClientApps; torch is imported
  once per actor);
- deployment: ``fedray server`` (SuperLink with TLS + site auth) + 3 ``fedray site`` SuperNodes
  on 127.0.0.1. Flower starts a fresh ``flwr-clientapp`` process per message; run twice, with
  each site's warm worker (clients/site_worker.py, the default) and without it
  (``fedray site --no-warm-worker``: every message imports torch and transformers again).

Where the deployment time goes: the cost of one ClientApp process start is measured directly
(a fresh interpreter importing flwr's ClientApp runtime, then torch, then the fedray ClientApp),
and multiplied by the 2 messages (train, evaluate) each site handles per round.
Results are appended to bench/results/sites.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config.federated import FederatedJob  # noqa: E402
from orchestrator.config.loader import load_config, to_yaml  # noqa: E402


def job_for(rounds: int, run_dir: Path) -> FederatedJob:
    return load_config(
        FederatedJob,
        "simulate-demo",
        [
            "federation.num_sites=3",
            f"federation.num_rounds={rounds}",
            "federation.min_sites=2",
            "federation.num_cpus=2",
            "partition.max_examples_per_site=400",
            "finetune.local_steps=10",
            f"run.dir={run_dir}",
        ],
    )


def write_site_files(job: FederatedJob, out: Path) -> list[Path]:
    """The simulation's partitions as one CSV per site (same rows as the simulated sites)."""
    from orchestrator.contract.partition import partition
    from orchestrator.data.sources import read_columns
    from orchestrator.federated.setup import server_data_path

    p = job.partition
    texts, labels, column = read_columns(
        str(server_data_path(job)), job.data.text_field, job.data.label_field, p.column
    )
    parts = partition(
        p.kind, labels or texts, column, job.federation.num_sites, p.alpha, job.federation.seed
    )
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, idx in enumerate(parts):
        f = out / f"site-{i}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([job.data.text_field, job.data.label_field])
            for j in idx:
                w.writerow([texts[j], labels[j] if labels else ""])
        files.append(f)
    return files


def round_times(run_dir: Path) -> list[float]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r["round_time_s"] for r in recs if r["round"] >= 1]


def bench_sim(rounds: int, work: Path) -> dict:
    from orchestrator.federated.simulate import simulate

    run_dir = work / "sim"
    t0 = time.monotonic()
    simulate(job_for(rounds, run_dir))
    return {"total_s": time.monotonic() - t0, "rounds_s": round_times(run_dir)}


def bench_deploy(rounds: int, work: Path, warm_worker: bool) -> dict:
    from orchestrator.processes import credentials, server_session, site
    from orchestrator.processes.managed import stop_all
    from orchestrator.processes.network import free_port

    work = work / ("warm" if warm_worker else "cold")
    run_dir = work / "deploy"
    job = job_for(rounds, run_dir)
    files = write_site_files(job, work / "site-data")
    pki = credentials.make_test_pki(work / "pki")
    keys = [credentials.make_site_key(work / "keys" / f"site-{i}") for i in range(len(files))]
    opts = server_session.ServerOptions(port=free_port(), certs=pki.ca_cert.parent)
    t0 = time.monotonic()
    sites = []
    log = open(work / "deploy-server.log", "w")  # noqa: SIM115
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open(out=log)
        session.register([k.public for k in keys], out=log)
        try:
            for i, (f, k) in enumerate(zip(files, keys, strict=True)):
                so = site.SiteOptions(
                    server=session.address,
                    data=f,
                    name=f"site-{i}",
                    key=k.private,
                    root_cert=pki.ca_cert,
                    port=free_port(),
                    warm_worker=warm_worker,
                )
                sites.append(site.site_process(so, work / f"site-{i}.log", work / f"s{i}"))
                sites[-1].start()
            t_submit = time.monotonic()
            run = session.run(to_yaml(job), run_dir, out=log)
        finally:
            stop_all(sites)
    log.close()
    assert run.ok, run.status
    return {
        "total_s": time.monotonic() - t0,
        "startup_s": t_submit - t0,
        "rounds_s": round_times(run_dir),
    }


STAGES = {
    "python + flwr ClientApp runtime": "import flwr.supernode.runtime.run_clientapp",
    "+ torch": "import flwr.supernode.runtime.run_clientapp, torch",
    "+ fedray ClientApp (what a site's message process imports)": "import "
    "flwr.supernode.runtime.run_clientapp, clients.client_app",
    "+ fedray site handlers (torch, transformers; a warm worker imports them once)": "import "
    "flwr.supernode.runtime.run_clientapp, clients.site_handlers",
}


def bench_process_start(repeats: int) -> dict[str, float]:
    """Median wall time of a fresh interpreter doing each stage's imports."""
    out = {}
    for name, code in STAGES.items():
        times = []
        for _ in range(repeats):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
            times.append(time.monotonic() - t0)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="process-start measurements")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--skip-deploy", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sites.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedray-bench-sites-"))
    starts = bench_process_start(args.repeats)
    sim = None if args.skip_sim else bench_sim(args.rounds, work)
    warm = None if args.skip_deploy else bench_deploy(args.rounds, work, warm_worker=True)
    cold = None if args.skip_deploy else bench_deploy(args.rounds, work, warm_worker=False)

    def med(d: dict | None) -> str:
        return f"{statistics.median(d['rounds_s']):.1f}" if d else "-"

    thin, full = list(starts.values())[-2:]
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} - {platform.node()}, "
        f"{platform.processor() or platform.machine()}, 3 sites, {args.rounds} rounds\n",
        "| engine | per-round wall time s (median) | rounds s | total s |",
        "|---|---|---|---|",
    ]
    runs = (
        ("simulation (Ray)", sim),
        ("deployment, warm site workers (default)", warm),
        ("deployment, `--no-warm-worker` (a process per message)", cold),
    )
    for name, d in runs:
        if d:
            rounds = ", ".join(f"{x:.1f}" for x in d["rounds_s"])
            lines.append(f"| {name} | {med(d)} | {rounds} | {d['total_s']:.1f} |")
    if sim and warm:
        ratio = statistics.median(warm["rounds_s"]) / statistics.median(sim["rounds_s"])
        lines.append(f"\nDeployment (warm) / simulation, per round: {ratio:.2f}x.")
    lines += [
        "",
        "Cost of one fresh process doing each stage's imports, median of "
        f"{args.repeats} (the deployment engine starts one per message):",
        "",
        "| stage | s |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in starts.items()],
        "",
        f"A message process at a site with a warm worker imports {thin:.1f} s worth; without "
        f"one, {full:.1f} s (each site handles 1-2 messages per round).",
    ]
    if warm:
        lines.append(
            f"Deployment start-up (SuperLink + key registration + sites): {warm['startup_s']:.1f} s."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
