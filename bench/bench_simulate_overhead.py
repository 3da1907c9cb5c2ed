"""Per-round overhead of ``fedray simulate``'s ServerApp vs a bare Flower loop, same ClientApp.

    python bench/bench_simulate_overhead.py [--sites 2] [--rounds 5] [--repeats 2]

Both sides run on Flower's supported simulation path, exactly as ``fedray simulate`` does
(``orchestrator.federated.simulate.run_on_simulation_engine``: ``flower-superlink --simulation``
on a free loopback port + ``flwr run --federation-config ... --stream``; ``flwr-simulation``
runs the ServerApp and the simulated SuperNodes on an embedded 2-CPU Ray), with the same
ClientApp (``clients.client_app:app``) and the same job (demo preset, small caps so a round takes
seconds). Only the ServerApp component differs:
- bare: ``bench.bench_simulate_overhead:app`` below, which only calls Flower's stock
  ``Strategy.start`` with our FedAvg (``grid.send_and_receive``, no metrics file, no
  checkpoints, no table);
- fedray: what ``fedray simulate`` submits (``orchestrator.federated.sim_serverapp:app``, which
  runs ``orchestrator.federated.server_app:app``: streaming replies, per-round metrics.jsonl,
  atomic checkpoint, per-site table).
A round = train + evaluate at every site. Per-round times are taken inside the ServerApp
process (bare: the ``evaluate_fn`` hook Flower calls after each round, written to
``RUN_DIR/bare-stamps.json``; fedray: ``round_time_s`` in metrics.jsonl), so SuperLink and Ray
start-up, round 0, round 1 (actor start-up in the bare loop) and the final export do not count;
the runs alternate and the median round of each kind is compared, which damps noise from other
work on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Everything the bare ServerApp needs is imported at module level, i.e. while Flower loads this
# component under its load lock (see orchestrator/federated/sim_serverapp.py for why).
import clients.client_app  # noqa: E402, F401
from orchestrator.config import load_config  # noqa: E402
from orchestrator.config.federated import FederatedJob  # noqa: E402
from orchestrator.config.loader import to_yaml  # noqa: E402
from orchestrator.contract.arrays import from_numpy  # noqa: E402
from orchestrator.contract.model import model_state  # noqa: E402
from orchestrator.federated.server_app import job_from_run_config, prepare  # noqa: E402
from strategies import build_strategy  # noqa: E402

BARE_SERVERAPP = "bench.bench_simulate_overhead:app"
STAMPS = "bare-stamps.json"


def job_for(rounds: int, sites: int, run_dir: str) -> FederatedJob:
    return load_config(
        FederatedJob,
        None,
        [
            f"federation.num_rounds={rounds}",
            f"federation.num_sites={sites}",
            "federation.min_sites=1",
            "federation.num_cpus=2",
            "partition.max_examples_per_site=200",
            "finetune.local_steps=5",
            f"run.dir={run_dir}",
        ],
        default_preset="simulate-demo",
    )


# The bare ServerApp: Flower's stock round loop, started by flwr-simulation like fedray's.
app = ServerApp()


@app.main()
def bare_main(grid: Grid, context: Context) -> None:
    job, run_dir = job_from_run_config(dict(context.run_config))
    setup = prepare(job)
    arrays: ArrayRecord = from_numpy({k: v.numpy() for k, v in model_state(setup.model).items()})
    strategy = build_strategy(job, update_keys=setup.update_keys)
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        stamps.append(time.perf_counter())

    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=job.federation.num_rounds,
        train_config=setup.task.to_record(),
        evaluate_config=setup.task.to_record(),
        evaluate_fn=stamp,  # type: ignore[arg-type]
    )
    (run_dir / STAMPS).write_text(json.dumps(stamps))


def round_times(kind: str, rounds: int, sites: int) -> list[float]:
    from orchestrator.federated.simulate import (
        SIM_SERVERAPP,
        federation_config,
        run_on_simulation_engine,
    )
    from orchestrator.runs import read_metrics

    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        job = job_for(rounds, sites, str(run_dir))
        serverapp = BARE_SERVERAPP if kind == "bare" else SIM_SERVERAPP
        log = io.StringIO()  # the streamed output; printed only if the run fails
        run = run_on_simulation_engine(
            to_yaml(job), run_dir, federation_config(job), serverapp=serverapp, out=log
        )
        if not run.ok:
            raise RuntimeError(f"{kind} run failed ({run.status}):\n{log.getvalue()[-4000:]}")
        if kind == "bare":
            stamps = json.loads((run_dir / STAMPS).read_text())
            return [b - a for a, b in itertools.pairwise(stamps)]
        return [r["round_time_s"] for r in read_metrics(run_dir / "metrics.jsonl") if r["round"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"bare": [], "fedray": []}
    for _ in range(args.repeats):
        for kind in ("bare", "fedray"):
            t0 = time.monotonic()
            t = round_times(kind, args.rounds, args.sites)
            # Round 1 of the bare loop also starts the Ray actors (fedray's round 0 evaluation
            # absorbs that); drop round 1 of both kinds.
            times[kind] += t[1:]
            wall = time.monotonic() - t0
            print(f"{kind}: rounds {[round(x, 2) for x in t]} ({wall:.0f} s wall)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| ServerApp | rounds measured | median round s | min round s |")
    print("|---|---|---|---|")
    for kind, v in times.items():
        print(f"| {kind} | {len(v)} | {med[kind]:.2f} | {min(v):.2f} |")
    print(f"\nfedray / bare (median round): {med['fedray'] / med['bare']:.2f}x")
    print(f"fedray / bare (min round): {min(times['fedray']) / min(times['bare']):.2f}x")


if __name__ == "__main__":
    main()
