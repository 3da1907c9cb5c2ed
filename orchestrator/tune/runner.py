"""``run_tune(setup, tune_dir)``: start (or resume) a search on Ray Tune and collect it.

The tune directory holds ``tune.yaml`` (the whole config), ``ray/`` (Tune's experiment state, for
``--resume``), ``trials/<id>/`` (each trial's run directory), ``trials.jsonl`` (one row per
trial), ``best.yaml`` (the tuned job with the best values, runnable as is), ``summary.json`` and,
with ``tune.eval_seeds``, ``eval/`` + ``eval.jsonl`` (the best configs re-run on other seeds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.cluster import ray_cluster
from orchestrator.config.loader import to_yaml
from orchestrator.processes.signals import STOP_SIGNALS, Interrupted
from orchestrator.run_log import console_to_run_log
from orchestrator.runs import read_metrics
from orchestrator.tune import results
from orchestrator.tune.conditional import trial_values
from orchestrator.tune.results import TrialRow
from orchestrator.tune.search import param_space, scheduler, searcher
from orchestrator.tune.setup import TuneSetup
from orchestrator.tune.trials import EVAL_KEY, TRAINABLES, TRIALS_DIR

log = logging.getLogger(__name__)

STATE_DIR = "ray"
EVAL_DIR = "eval"
RERUN = {"federated": "fedray simulate", "pretrain": "fedray pretrain"}


class TuneFailed(RuntimeError):
    """Every trial failed (exit 1 with the first trial's error)."""


@dataclass
class TuneResult:
    tune_dir: Path
    rows: list[TrialRow]
    best: TrialRow | None
    eval_rows: list[TrialRow] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def tune_env() -> None:
    """Tune settings fedray relies on (set before Tune is imported, inherited by its workers):
    our own signal handling (SIGINT like SIGTERM: stop, keep the state, ``--resume``), and no
    error for pretraining's checkpoint reports, which carry no eval metric."""
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def reuse_actors(setup: TuneSetup) -> bool:
    """A federated trial's process is reused by the next trial (torch, Flower and the model are
    not imported and loaded again): its thread waits in ``tune.report`` whenever it could be
    stopped. A pretraining trial's thread is inside ``trainer.fit()`` when Tune stops it (the
    reports come from Ray Train's callback), so Tune cannot take its process over in time and
    would fail the next trial: each pretraining trial gets a fresh process."""
    return setup.kind == "federated"


def trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def run_tune(
    setup: TuneSetup, tune_dir: Path, *, resume: bool = False, console: Console | None = None
) -> TuneResult:
    """Run the search (``resume``: continue the one in ``tune_dir``), write its files, print its
    table; raises :class:`TuneFailed` when every trial failed."""
    console = console or Console(highlight=False, soft_wrap=True)
    tune_env()
    t0 = time.monotonic()
    tune_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (tune_dir / "tune.yaml").write_text(to_yaml(setup.tune_job))
    console.print(
        f"[fedray] tune {tune_dir} | {setup.kind} | {setup.metric} ({setup.mode})", markup=False
    )
    verbose = setup.tune_job.logging.verbose
    # Trials' own output (torch, datasets, Ray worker lines) stays in Ray's worker logs, and
    # this process's third-party lines in run.log, unless --verbose; a failed trial's error is
    # in its row (and Tune's error.txt under ray/<trial>/).
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.WARNING)
    with console_to_run_log(tune_dir, verbose), ray_cluster(setup.cluster, log_to_driver=verbose):
        rows = search(setup, tune_dir, resume, console)
        best = results.best_row(rows, setup.mode)
        out = TuneResult(tune_dir, rows, best)
        results.write_rows(tune_dir / "trials.jsonl", rows)
        if best is None:
            first = next((r.error for r in rows if r.error), "no trial reported the metric")
            raise TuneFailed(f"every trial failed; the first: {first}")
        write_best(setup, best, tune_dir)
        if setup.tune.eval_seeds:
            out.eval_rows = eval_seeds(setup, rows, tune_dir, console)
    out.summary = summary(setup, out, time.monotonic() - t0)
    (tune_dir / "summary.json").write_text(json.dumps(out.summary, indent=1))
    print_result(setup, out, console)
    return out


def _trainable(setup: TuneSetup, tune_dir: Path) -> Any:
    from ray import tune

    fn = tune.with_parameters(TRAINABLES[setup.kind], setup=setup, tune_dir=str(tune_dir))
    cpus = setup.cpus_per_trial()
    # A pretraining trial's driver reserves no CPU (its worker group reserves its own); Ray
    # refuses an empty request, so it asks for one byte of memory instead.
    return tune.with_resources(fn, {"CPU": cpus} if cpus else {"CPU": 0, "memory": 1})


def search(setup: TuneSetup, tune_dir: Path, resume: bool, console: Console) -> list[TrialRow]:
    import ray
    from ray import tune

    trainable = _trainable(setup, tune_dir)
    state = tune_dir / STATE_DIR
    if resume and tune.Tuner.can_restore(str(state)):
        console.print(f"[fedray] resuming {state} (finished trials are kept)", markup=False)
        tuner = tune.Tuner.restore(
            str(state), trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        t = setup.tune
        total = ray.cluster_resources().get("CPU", 1.0)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(setup),
            tune_config=tune.TuneConfig(
                metric=setup.metric,
                mode=setup.mode,
                search_alg=searcher(setup, setup.max_concurrent(total)),
                scheduler=scheduler(setup),
                num_samples=t.num_samples,
                trial_dirname_creator=trial_dirname,
                reuse_actors=reuse_actors(setup),
            ),
            run_config=_run_config(setup, tune_dir, STATE_DIR),
        )
    return collect(setup, fit(tuner), tune_dir)


def fit(tuner: Any) -> Any:
    """``tuner.fit()``; a stop signal ends it gracefully, then raises :class:`Interrupted`."""
    with graceful_stop() as stopped:
        grid = tuner.fit()
    if stopped:
        raise Interrupted(stopped[0])  # Tune saved its state: --resume continues
    return grid


@contextlib.contextmanager
def graceful_stop() -> Iterator[list[int]]:
    """While Tune runs: SIGINT, SIGTERM and SIGHUP end the search the way Tune's own stop
    signal (SIGUSR1) does: the loop stops, running trials are stopped, the experiment state is
    written (so ``--resume`` knows every finished trial). The signal is yielded back, to be
    raised as :class:`Interrupted` (exit 128+N) once Tune has returned; a second signal raises
    it at once (``--resume`` then starts from Tune's last periodic snapshot)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def stop(signum: int, frame: object) -> None:
        if got:  # a second signal: stop now, without waiting for Tune's last snapshot
            raise Interrupted(signum)
        got.append(signum)
        signal.raise_signal(signal.SIGUSR1)  # Tune's handler: stop after this step

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_config(setup: TuneSetup, tune_dir: Path, name: str) -> Any:
    from ray import tune

    from orchestrator.tune.lines import TrialLines

    return tune.RunConfig(
        name=name,
        storage_path=str(tune_dir.absolute()),
        failure_config=tune.FailureConfig(max_failures=setup.tune.max_failures),
        verbose=0,
        callbacks=[TrialLines(setup.metric, setup.time_attr)],
    )


def collect(setup: TuneSetup, grid: Any, tune_dir: Path) -> list[TrialRow]:
    """One row per trial of a ResultGrid, from its run directory and Tune's error."""
    rows = []
    for res in grid:
        trial = Path(res.path).name
        run_dir = tune_dir / TRIALS_DIR / trial
        config = trial_values(res.config.get(EVAL_KEY, res.config))
        rows.append(
            results.trial_row(
                trial,
                config,
                trial_records(setup, res, run_dir),
                metric=setup.metric,
                time_attr=setup.time_attr,
                max_t=setup.max_t,
                error=error_text(res.error) if res.error else "",
                run_dir=str(run_dir),
            )
        )
    return sorted(rows, key=lambda r: r.trial)


def trial_records(setup: TuneSetup, res: Any, run_dir: Path) -> list[dict[str, Any]]:
    """A trial's records: a federation's own ``metrics.jsonl`` (written before each report, and
    kept across a resume); for pretraining, what the trial reported to Tune (its metrics sink
    writes ``metrics.jsonl`` asynchronously and may not have flushed when Tune stopped it)."""
    if setup.kind == "federated":
        return read_metrics(run_dir / "metrics.jsonl")
    df = res.metrics_dataframe
    return [] if df is None else df.to_dict("records")


def error_text(e: BaseException) -> str:
    """A trial's error in one line: the user's exception, not Ray's wrapper."""
    cause = getattr(e, "cause", None) or e
    text = f"{type(cause).__name__}: {cause}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if len(lines) > 1 and "Traceback" in text else (lines[0] if lines else text)


def write_best(setup: TuneSetup, best: TrialRow, tune_dir: Path) -> Path:
    """``best.yaml``: the tuned job with the best trial's values, in a run directory of its own
    (run.name/run.dir cleared), runnable as is."""
    job = setup.job(best.config)
    job.run.name = None
    job.run.dir = None
    head = (
        f"# Best of {tune_dir.name}: trial {best.trial}, {setup.metric}={best.metric:.6g} "
        f"({best.used} {setup.time_attr}s).\n# Run it: {RERUN[setup.kind]} {tune_dir / 'best.yaml'}\n"
    )
    path = tune_dir / "best.yaml"
    path.write_text(head + to_yaml(job))
    return path


def eval_seeds(
    setup: TuneSetup, rows: list[TrialRow], tune_dir: Path, console: Console
) -> list[TrialRow]:
    """Re-run the best ``eval_top_k`` configs on every seed of ``tune.eval_seeds`` (FIFO, to
    the end); rows in ``eval.jsonl``."""
    from ray import tune

    t = setup.tune
    top = results.top_configs(rows, setup.mode, t.eval_top_k)
    seed_keys = ["train.seed"] + (["federation.seed"] if setup.kind == "federated" else [])
    configs = [{**r.config, **dict.fromkeys(seed_keys, s)} for r in top for s in t.eval_seeds]
    console.print(f"[fedray] eval_seeds: {len(top)} config(s) x seeds {t.eval_seeds}", markup=False)
    tuner = tune.Tuner(
        _trainable(setup, tune_dir),
        param_space={EVAL_KEY: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            trial_dirname_creator=trial_dirname, reuse_actors=reuse_actors(setup)
        ),
        run_config=_run_config(setup, tune_dir, EVAL_DIR),
    )
    out = collect(setup, fit(tuner), tune_dir)
    results.write_rows(tune_dir / "eval.jsonl", out)
    return out


def summary(setup: TuneSetup, out: TuneResult, wall_s: float) -> dict[str, Any]:
    rows = out.rows + out.eval_rows
    best = asdict(out.best) if out.best else None
    if best:
        best.pop("history")
    delta = setup.tune_job.privacy.delta if setup.kind == "federated" else 0.0
    return {
        "job": setup.kind,
        "metric": setup.metric,
        "mode": setup.mode,
        "trials": len(out.rows),
        "status": {s: sum(r.status == s for r in out.rows) for s in results.STATUSES},
        f"{setup.time_attr}s_computed": sum(r.used for r in out.rows),
        f"{setup.time_attr}s_if_all_ran": setup.max_t * len(out.rows),
        "best": best,
        "eval_seeds": results.seed_summary(out.eval_rows, setup.keys),
        "privacy": results.privacy_spent(rows, delta),
        "wall_s": round(wall_s, 1),
    }


def print_result(setup: TuneSetup, out: TuneResult, console: Console) -> None:
    keys, unit = setup.keys, f"{setup.time_attr}s"
    results.print_table(console, out.rows, keys, setup.metric, unit, out.best)
    s = out.summary
    console.print(
        f"[fedray] {s['trials']} trials ({', '.join(f'{n} {k}' for k, n in s['status'].items() if n)}); "
        f"{s[f'{unit}_computed']} of {s[f'{unit}_if_all_ran']} {unit} computed",
        markup=False,
    )
    for e in s["eval_seeds"]:
        if e["mean"] is None:
            console.print(f"[fedray] eval seeds {e['seeds']}: every re-run failed", markup=False)
            continue
        console.print(
            f"[fedray] eval seeds {e['seeds']}: {setup.metric} {e['mean']:.4f} +- {e['stdev']:.4f}"
            f" for {e['config']}",
            markup=False,
        )
    if s["privacy"]:
        p = s["privacy"]
        console.print(
            f"[fedray] privacy: the search spent epsilon {p['epsilon']} (delta {p['delta']:.3g}) "
            f"over {p['trials']} trials ({p['composition']}; docs/privacy.md)",
            markup=False,
        )
    if out.best is not None:
        console.print(
            f"[fedray] best: trial {out.best.trial}, {setup.metric} {out.best.metric:.4f}; "
            f"{RERUN[setup.kind]} {out.tune_dir / 'best.yaml'}",
            markup=False,
        )


__all__ = ["TuneFailed", "TuneResult", "collect", "run_tune", "write_best"]
