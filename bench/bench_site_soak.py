"""Does a real site's cost per message stay flat over many rounds?

    python bench/bench_site_soak.py                  # 3 sites, 50 rounds, a tiny model
    python bench/bench_site_soak.py --rounds 20

A ``fedray server`` session (SuperLink with TLS + site authentication) and 3 SuperNodes as
``fedray site`` starts them (warm workers on), on 127.0.0.1. Each round every site trains once
(``federation.eval_every`` far away, so the rounds are train messages only). Read back:

- the per-message overhead each site reports (``overhead-s`` / ``overhead-cpu-s`` in
  ``metrics.jsonl``): the process Flower starts per message, up to the hand-over;
- the resident memory of every site process (SuperNode + warm worker), sampled once a second.

Flat means the last 10 rounds' median is within 25% of rounds 2-11's (round 1 starts the
workers). Results are appended to bench/results/site_soak.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config.federated import FederatedJob  # noqa: E402
from orchestrator.config.loader import load_config, to_yaml  # noqa: E402

JOB = [
    "federation.num_sites=3",
    "federation.min_sites=3",
    "federation.round_timeout_s=300",
    "model.path=null",
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_model=64",
    "data.tokenizer.path=null",
    "data.tokenizer.vocab_size=1024",
    "task.max_length=32",
    "finetune.local_steps=2",
    "train.micro_batch_size=16",
]


def site_files(out: Path) -> list[Path]:
    demo = ROOT / "orchestrator" / "data" / "demo" / "tweets_sentiment.csv"
    rows = list(csv.DictReader(demo.open()))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(3):
        f = out / f"site-{i}.csv"
        with f.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["topic", "label", "text"])
            w.writeheader()
            w.writerows(rows[i::3][:200])
        files.append(f)
    return files


class MemorySampler(threading.Thread):
    """Every second: the summed RSS of each site's process tree (SuperNode + its worker)."""

    def __init__(self, sites: list) -> None:
        super().__init__(daemon=True)
        self.sites, self.samples, self.stop = sites, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            rss = []
            for s in self.sites:
                total = 0
                for p in [psutil.Process(s.pid), *s.descendants()]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                rss.append(total / 2**20)
            self.samples.append((time.monotonic(), rss))


def soak(rounds: int, work: Path) -> tuple[list[dict], list[tuple[float, list[float]]], float]:
    from orchestrator.processes import credentials, server_session, site
    from orchestrator.processes.managed import stop_all
    from orchestrator.processes.network import free_port

    run_dir = work / "run"
    job: FederatedJob = load_config(
        FederatedJob,
        "simulate-demo",
        [
            *JOB,
            f"federation.num_rounds={rounds}",
            f"federation.eval_every={rounds + 1}",
            f"run.dir={run_dir}",
        ],
    )
    files = site_files(work / "data")
    pki = credentials.make_test_pki(work / "pki")
    keys = [credentials.make_site_key(work / "keys" / f"site-{i}") for i in range(3)]
    opts = server_session.ServerOptions(port=free_port(), certs=pki.ca_cert.parent)
    sites = []
    t0 = time.monotonic()
    with (
        open(work / "server.log", "w") as log,
        server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session,
    ):
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
                    num_threads=1,
                )
                sites.append(site.site_process(so, work / f"site-{i}.log", work / f"s{i}").start())
            sampler = MemorySampler(sites)
            sampler.start()
            run = session.run(to_yaml(job), run_dir, out=log)
            sampler.stop.set()
        finally:
            stop_all(sites)
    assert run.ok, run.status
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["round"] >= 1], sampler.samples, time.monotonic() - t0


def flat(values: list[float]) -> tuple[float, float, bool]:
    early, late = statistics.median(values[1:11]), statistics.median(values[-10:])
    return early, late, late <= 1.25 * early


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "site_soak.md")
    args = ap.parse_args()
    if args.rounds < 21:
        ap.error("--rounds must be at least 21 (rounds 2-11 are compared with the last 10)")
    rows, samples, total = soak(args.rounds, Path(tempfile.mkdtemp(prefix="fedray-soak-")))
    per_round = {
        k: [statistics.median(r["sites"][f"site-{i}"][k] for i in range(3)) for r in rows]
        for k in ("overhead-s", "overhead-cpu-s")
    }
    rss = [max(s[1]) for s in samples]
    tenth = max(1, len(rss) // 10)
    rss_early, rss_late = statistics.median(rss[tenth : 2 * tenth]), statistics.median(rss[-tenth:])
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} - {platform.node()}, 3 real sites (warm "
        f"workers), {args.rounds} rounds, {total:.0f} s in all\n",
        "| per message, median over sites | rounds 2-11 | last 10 rounds | flat (<= 1.25x) |",
        "|---|---|---|---|",
    ]
    for k, v in per_round.items():
        early, late, ok = flat(v)
        lines.append(f"| {k} | {early:.2f} | {late:.2f} | {'yes' if ok else 'NO'} |")
    lines.append(
        f"| largest site's RSS, MiB (SuperNode + worker; 2nd vs last tenth of the run) | "
        f"{rss_early:.0f} | {rss_late:.0f} | {'yes' if rss_late <= 1.25 * rss_early else 'NO'} |"
    )
    lines.append(
        "\nRound wall time s (median): "
        f"{statistics.median(r['round_time_s'] for r in rows):.2f}; max overhead-cpu-s of any "
        f"message: {max(r['sites'][s]['overhead-cpu-s'] for r in rows for s in r['sites']):.2f}."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
