"""Metrics: workers send records to a MetricsSink actor pinned to the driver's node, which appends
them to the run's ``metrics.jsonl`` and writes them as TensorBoard scalars (``RUN_DIR/tensorboard``,
:mod:`orchestrator.tracking`); the driver tails metrics.jsonl to print progress.

Only rank 0 sends step records, and the sink is the only writer of both files, so ranks never
race on them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from orchestrator.config.schema import LoggingConfig
from orchestrator.progress import Progress
from orchestrator.tracking import Tracker, pretrain_scalars


@ray.remote(num_cpus=0)
class MetricsSink:
    """Appends one JSON object per line and writes step records to TensorBoard (and MLflow when
    configured); one writer, so lines never interleave."""

    def __init__(self, path: str, logging_cfg: LoggingConfig | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.tracker = Tracker(self.path.parent, logging_cfg) if logging_cfg else None

    def log(self, record: dict[str, Any]) -> None:
        now = float(record.get("wall_time", time.time()))  # the worker's stamp when it sent one
        record = {**record, "time": round(now - self.t0, 3), "wall_time": round(now, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None and "step" in record:
            self.tracker.log(int(record["step"]), pretrain_scalars(record))

    def event(self, message: str) -> None:
        self.log({"event": message})

    def ready(self) -> bool:
        """Answers once the sink is set up (an MLflow set-up error surfaces here, at start)."""
        return True

    def close(self) -> None:
        """Flush and close the event file (and end the MLflow run); call once, at the end."""
        if self.tracker is not None:
            self.tracker.close()


def create_sink(path: Path, logging_cfg: LoggingConfig | None = None) -> Any:
    """A sink on this (the driver's) node, so metrics.jsonl and the TensorBoard event files land
    in the local run directory."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return MetricsSink.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    ).remote(str(path), logging_cfg)


def format_record(rec: dict[str, Any], max_steps: int) -> str:
    if "event" in rec:
        return f"[fedray] {rec['event']}"
    parts = [
        f"step {rec['step']:>6}/{max_steps}",
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"gnorm {rec['grad_norm']:.2f}",
        f"{rec['tokens_per_s'] / 1e3:.1f}k tok/s",
        f"{rec['step_time'] * 1e3:.0f} ms/step",
    ]
    if "mfu" in rec:
        parts.append(f"MFU {rec['mfu'] * 100:.1f}%")
    if "val_loss" in rec:
        parts.append(f"val_loss {rec['val_loss']:.4f} ppl {rec['val_ppl']:.1f}")
    return " | ".join(parts)


class ProgressPrinter:
    """Tails metrics.jsonl in a thread and prints every ``log_every``-th step, evals and events;
    on a terminal, a progress bar of the steps too (:mod:`orchestrator.progress`)."""

    def __init__(self, path: Path, max_steps: int, log_every: int, console: Console | None = None):
        self.path, self.max_steps, self.log_every = path, max_steps, log_every
        self.console = console or Console(highlight=False)
        self._stop = threading.Event()
        self._offset = path.stat().st_size if path.exists() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.bar = Progress("steps", total=max_steps, plain=False)

    def __enter__(self) -> ProgressPrinter:
        self.bar.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._drain()
        finally:
            self.bar.close()

    def _drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind("\n") + 1]
        self._offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = rec.get("step", 0)
            if isinstance(rec.get("loss"), float):
                self.bar.update(completed=step, info=f"loss {rec['loss']:.4f}")
            if "event" in rec or "val_loss" in rec or step % self.log_every == 0 or step == 1:
                self.console.print(format_record(rec, self.max_steps), markup=False, soft_wrap=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._drain()
