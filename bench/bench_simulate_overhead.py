"""Per-round overhead of ``fedray simulate``'s ServerApp vs a bare Flower loop, same ClientApp.

    python bench/bench_simulate_overhead.py [--sites 2] [--rounds 1,3]

Both run on ``flwr.simulation.run_simulation`` (embedded Ray, 2 CPUs) with the same ClientApp
and the same job (demo preset, small caps so a round takes seconds):
- bare: a ServerApp that only calls Flower's stock ``Strategy.start`` with our FedAvg
  (``grid.send_and_receive``, no metrics file, no checkpoints, no export, no table);
- fedray: ``make_server_app(job)`` (streaming replies, per-round metrics.jsonl, atomic
  checkpoint, per-site table, round-0 evaluation and the final HF export).
Per-round time = (T(R_max) - T(R_min)) / (R_max - R_min), which cancels start-up and Ray costs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from clients.client_app import app as client_app
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.federated.server_app import make_server_app, prepare
from orchestrator.federated.simulate import backend_config
from orchestrator.federated.task_model import model_state
from strategies import build_strategy
from strategies.records import from_numpy


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


def bare_app(job: FederatedJob) -> ServerApp:
    setup = prepare(job)
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        arrays: ArrayRecord = from_numpy(
            {k: v.numpy() for k, v in model_state(setup.model).items()}
        )
        strategy = build_strategy(job, update_keys=setup.update_keys)
        strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=job.federation.num_rounds,
            train_config=setup.site_config,
            evaluate_config=setup.site_config,
        )

    return app


def timed(kind: str, rounds: int, sites: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        job = job_for(rounds, sites, str(Path(d) / "run"))
        app = bare_app(job) if kind == "bare" else make_server_app(job, Path(d) / "run")
        t = time.perf_counter()
        run_simulation(app, client_app, num_supernodes=sites, backend_config=backend_config(job))  # type: ignore[arg-type]
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--rounds", default="1,3")
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    lo, hi = (int(x) for x in args.rounds.split(","))
    rows = {}
    for kind in ("bare", "fedray"):
        t_lo, t_hi = timed(kind, lo, args.sites), timed(kind, hi, args.sites)
        rows[kind] = (t_lo, t_hi, (t_hi - t_lo) / (hi - lo))
        print(
            f"{kind}: T({lo})={t_lo:.1f}s T({hi})={t_hi:.1f}s per-round={rows[kind][2]:.2f}s",
            flush=True,
        )
    print(f"\n| ServerApp | T(R={lo}) s | T(R={hi}) s | per round s |")
    print("|---|---|---|---|")
    for kind, (a, b, c) in rows.items():
        print(f"| {kind} | {a:.1f} | {b:.1f} | {c:.2f} |")
    print(f"\nfedray / bare per-round: {rows['fedray'][2] / rows['bare'][2]:.2f}x")


if __name__ == "__main__":
    main()
