"""Per-round overhead of ``fedray simulate``'s ServerApp vs a bare Flower loop, same ClientApp.

    python bench/bench_simulate_overhead.py [--sites 2] [--rounds 4] [--repeats 2]

Both run on ``flwr.simulation.run_simulation`` (embedded Ray, 2 CPUs) with the same ClientApp
and the same job (demo preset, small caps so a round takes seconds):
- bare: a ServerApp that only calls Flower's stock ``Strategy.start`` with our FedAvg
  (``grid.send_and_receive``, no metrics file, no checkpoints, no table);
- fedray: ``make_server_app(job)`` (streaming replies, per-round metrics.jsonl, atomic
  checkpoint, per-site table).
A round = train + evaluate at every site. Per-round times are taken inside the runs (bare: the
``evaluate_fn`` hook Flower calls after each round; fedray: ``round_time_s`` in metrics.jsonl),
so Ray start-up, round 0, round 1 (actor start-up in the bare loop) and the final export
do not count; the runs alternate and the median
round of each kind is compared, which damps noise from other work on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from clients.client_app import app as client_app
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.contract.arrays import from_numpy
from orchestrator.contract.model import model_state
from orchestrator.federated.server_app import make_server_app, prepare
from orchestrator.federated.simulate import backend_config
from strategies import build_strategy


def job_for(rounds: int, sites: int, run_dir: str) -> FederatedJob:
    return load_config(
        FederatedJob,
        None,
        [
            f"federation.num_rounds={rounds}",
            f"federation.num_sites={sites}",
            "federation.min_sites=1",
            "partition.max_examples_per_site=200",
            "finetune.local_steps=5",
            f"run.dir={run_dir}",
        ],
        default_preset="simulate-demo",
    )


def bare_app(job: FederatedJob, stamps: list[float]) -> ServerApp:
    setup = prepare(job)
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        arrays: ArrayRecord = from_numpy(
            {k: v.numpy() for k, v in model_state(setup.model).items()}
        )
        strategy = build_strategy(job, update_keys=setup.update_keys)

        def stamp(server_round: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())

        strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=job.federation.num_rounds,
            train_config=setup.site_config,
            evaluate_config=setup.site_config,
            evaluate_fn=stamp,  # type: ignore[arg-type]
        )

    return app


def round_times(kind: str, rounds: int, sites: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        job = job_for(rounds, sites, str(run_dir))
        stamps: list[float] = []
        app = bare_app(job, stamps) if kind == "bare" else make_server_app(job, run_dir)
        run_simulation(app, client_app, num_supernodes=sites, backend_config=backend_config(job))  # type: ignore[arg-type]
        if kind == "bare":
            return [b - a for a, b in itertools.pairwise(stamps)]
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["round_time_s"] for r in rows if r["round"] > 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    times: dict[str, list[float]] = {"bare": [], "fedray": []}
    for _ in range(args.repeats):
        for kind in ("bare", "fedray"):
            t = round_times(kind, args.rounds, args.sites)
            # Round 1 of the bare loop also starts the Ray actors (fedray's round 0 evaluation
            # absorbs that); drop round 1 of both kinds.
            times[kind] += t[1:]
            print(f"{kind}: rounds {[round(x, 2) for x in t]}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| ServerApp | rounds measured | median round s | min round s |")
    print("|---|---|---|---|")
    for kind, v in times.items():
        print(f"| {kind} | {len(v)} | {med[kind]:.2f} | {min(v):.2f} |")
    print(f"\nfedray / bare (median round): {med['fedray'] / med['bare']:.2f}x")
    print(f"fedray / bare (min round): {min(times['fedray']) / min(times['bare']):.2f}x")


if __name__ == "__main__":
    main()
