"""Experiment tracking: TensorBoard event files (and optionally MLflow) for a run directory.

One :class:`Tracker` per process writes a run's scalars, so ranks never race on a file:

- pretraining: the driver-node ``MetricsSink`` actor (:mod:`orchestrator.pretrain.metrics`)
  receives rank 0's step records and passes each to :func:`pretrain_scalars`;
- federated: the server's round loop hands each round record to :func:`log_round`.

Event files go to ``RUN_DIR/tensorboard`` (``logging.tensorboard``, on by default), so
``tensorboard --logdir runs/`` shows every run. A resumed run opens a *new* event file next to
the old ones (never truncating them) whose first event marks the first step it logs: TensorBoard
then drops the old file's values from that step on (the steps after the last checkpoint, which
the resumed run repeats). MLflow (``logging.mlflow_uri``) is imported only when configured; the
run id is kept in ``RUN_DIR/mlflow_run_id`` so a resumed run appends to the same MLflow run.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import LoggingConfig

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
"""Event files live in ``RUN_DIR/tensorboard``."""
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
MLFLOW_INSTALL_HINT = "pip install 'fedray[mlflow]'"

# Pretraining record key (orchestrator/pretrain/loop.py) -> TensorBoard tag.
PRETRAIN_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time": "perf/step_time_s",
    "mfu": "perf/mfu",
    "val_loss": "val/loss",
    "val_ppl": "val/perplexity",
}

# Federated round record ``train`` columns (strategies/base.py) with their own tag.
ROUND_TRAIN_TAGS = {
    "train-loss": "train/loss",
    "sites-sampled": "sites/sampled",
    "sites-accepted": "sites/accepted",
    "sites-rejected": "sites/rejected",
    "sites-dropped": "sites/dropped",
    "bytes-received": "comm/bytes_received",
}
# Top-level numeric columns of a round record with a tag of their own. Any other numeric
# top-level key gets a tag by rule (round_tag), so columns added later need no change here.
ROUND_TAGS = {
    "bytes_up": "comm/bytes_up",
    "bytes_down": "comm/bytes_down",
    "round_time_s": "time/round_s",
    "elapsed_s": "time/elapsed_s",
    "epsilon": "privacy/epsilon",
    "delta": "privacy/delta",
}
# Parts of a round record that are not scalars of the round (or are logged otherwise).
ROUND_SKIP = {"round", "eval", "train", "sites", "attack", "event"}
MAX_DEPTH = 3
"""Nested mappings deeper than this (below the record) are not flattened into tags."""
# What an aggregation stage did to a site's reply, from its note (strategies/fold.py and the rule files):
# "clipped: norm ...", "clipped at distance ...", "trimmed at ...", "discarded (Krum ...)",
# "weight capped ...". Counted per round as sites/<kind>.
NOTE_KINDS = ("clipped", "trimmed", "discarded", "capped")

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")
MAX_NAME = 64


def finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tag_part(name: Any) -> str:
    """A site or metric name made safe for one tag component (sites name themselves: untrusted
    text): at most 64 characters, no ``/``, no control characters."""
    return _TAG_UNSAFE.sub("_", str(name))[:MAX_NAME] or "_"


# --------------------------------------------------------------------------------------------
# Records -> scalars


def pretrain_scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """Tags of one pretraining step record (``mfu`` and ``val/*`` only when present)."""
    return {
        tag: float(rec[key]) for key, tag in PRETRAIN_TAGS.items() if finite_number(rec.get(key))
    }


def note_kind(note: str) -> str | None:
    """``clipped`` / ``trimmed`` / ``discarded`` / ``capped`` for an aggregation note."""
    head = str(note).split(":")[0].split("(")[0]
    return next((k for k in NOTE_KINDS if k in head.split()), None)


def round_tag(key: str) -> str:
    """The tag of a top-level numeric round column: :data:`ROUND_TAGS`, else ``comm/<key>`` for
    byte counts (``bytes-up``), ``time/<key>`` for seconds (``*_s``), else ``round/<key>``."""
    if key in ROUND_TAGS:
        return ROUND_TAGS[key]
    safe = tag_part(key)
    if "bytes" in key:
        return f"comm/{safe}"
    if key.endswith("_s"):
        return f"time/{safe}"
    return f"round/{safe}"


def numeric_leaves(value: Any, prefix: str, depth: int = 1) -> dict[str, float]:
    """``{prefix/key[/key...]: value}`` for every finite number in a (nested) mapping; text,
    booleans and lists are not scalars. ``prefix`` itself when ``value`` is a number."""
    if finite_number(value):
        return {prefix: float(value)}
    if not isinstance(value, Mapping) or depth > MAX_DEPTH:
        return {}
    out: dict[str, float] = {}
    for k, v in value.items():
        out.update(numeric_leaves(v, f"{prefix}/{tag_part(k)}", depth + 1))
    return out


def round_scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """Tags of one federated round record (orchestrator/federated/rounds.py): every number in
    it, so columns other modules add (privacy, compression, ...) flow through unchanged.

    - ``eval/<metric>``: the global model, pooled over sites (``eval-`` prefix dropped);
    - ``train/<metric>``, and ``sites/{sampled,accepted,rejected,dropped}``,
      ``comm/bytes_received`` for the strategy's counters (:data:`ROUND_TRAIN_TAGS`);
    - ``sites/{clipped,trimmed,discarded,capped}``: sites whose update an aggregation stage
      changed (training rounds; from the per-site notes);
    - ``site/<name>/<metric>``: each site's numbers (bytes it sent included, when recorded);
    - top-level numbers: :func:`round_tag` (``comm/bytes_up``, ``time/round_s``,
      ``privacy/epsilon``, ``comm/bytes-up``, ``round/<key>``);
    - any other mapping ``<name>``: ``<name>/<key>`` (``privacy: {epsilon: ..}`` ->
      ``privacy/epsilon``).
    """
    out: dict[str, float] = {}
    for k, v in (rec.get("eval") or {}).items():
        out.update(numeric_leaves(v, f"eval/{tag_part(str(k).removeprefix('eval-'))}"))
    train = rec.get("train") or {}
    for k, v in train.items():
        tag = ROUND_TRAIN_TAGS.get(k, f"train/{tag_part(str(k).removeprefix('train-'))}")
        out.update(numeric_leaves(v, tag))
    sites = rec.get("sites") or {}
    if "train" in rec:  # a training round (round 0 only evaluates)
        counts = dict.fromkeys(NOTE_KINDS, 0)
        for row in sites.values():
            kind = note_kind(row.get("aggregation", "")) if isinstance(row, dict) else None
            if kind:
                counts[kind] += 1
        out.update({f"sites/{k}": float(n) for k, n in counts.items()})
    for key, value in rec.items():
        if key in ROUND_SKIP:
            continue
        if finite_number(value):
            out[round_tag(str(key))] = float(value)
        elif isinstance(value, Mapping):
            out.update(numeric_leaves(value, tag_part(key)))
    for name, row in sites.items():
        if isinstance(row, Mapping):
            out.update(numeric_leaves(row, f"site/{tag_part(name)}"))
    return out


# --------------------------------------------------------------------------------------------
# Backends


def check_available(cfg: LoggingConfig) -> None:
    """Raise a :class:`ConfigError` (exit 2, key ``logging.mlflow_uri``) if MLflow is configured
    but not installed; called before anything starts."""
    if cfg.mlflow_uri is None:
        return
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"logging.mlflow_uri={cfg.mlflow_uri!r} is set but the mlflow package is not "
            f"installed. Install the extra ({MLFLOW_INSTALL_HINT}), or set "
            "logging.mlflow_uri=null to log to TensorBoard only.",
            "logging.mlflow_uri",
        )


class MlflowLog:
    """Scalars to one MLflow run through ``MlflowClient`` (no global active-run state). The run
    id is kept in ``RUN_DIR/mlflow_run_id``: a resumed run logs to the same MLflow run."""

    def __init__(
        self, run_dir: Path, cfg: LoggingConfig, client: Any = None, entities: Any = None
    ) -> None:
        if client is None or entities is None:
            check_available(cfg)
            import mlflow
            import mlflow.entities

            client = client or mlflow.MlflowClient(tracking_uri=cfg.mlflow_uri)
            entities = entities or mlflow.entities
        self.client, self.entities = client, entities
        id_file = run_dir / MLFLOW_RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        if run_id:  # a resumed run: the same MLflow run, running again
            client.update_run(run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(cfg.mlflow_experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow_experiment)
            run_id = client.create_run(exp_id, run_name=run_dir.name).info.run_id
            id_file.write_text(run_id + "\n")
        self.run_id = run_id

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        ts = int(time.time() * 1000)
        metrics = [self.entities.Metric(k, v, ts, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's per-batch metric limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


WriterFactory = Callable[..., Any]


def _summary_writer(log_dir: str, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir, purge_step=purge_step, flush_secs=10)


class Tracker:
    """Scalars of one run to TensorBoard (``RUN_DIR/tensorboard``) and, if set, MLflow.

    The event file is opened at the first :meth:`log`, with that step as its purge step (see the
    module docstring), so a resumed run appends a file and supersedes the steps it repeats.
    Setting up MLflow (the experiment, the run) fails here, before the run goes on; a backend
    that fails later (server gone, disk full) is turned off with a warning, and training
    continues (metrics.jsonl keeps every record).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggingConfig,
        *,
        writer_factory: WriterFactory = _summary_writer,
        mlflow: MlflowLog | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / TENSORBOARD_DIR
        self.cfg = cfg
        self._factory = writer_factory
        self._writer: Any = None
        self._closed = False
        self._tensorboard_on = cfg.tensorboard
        if not cfg.tensorboard:
            log.warning("logging.tensorboard=false: no TensorBoard event files for this run")
        self.mlflow = mlflow or (MlflowLog(self.run_dir, cfg) if cfg.mlflow_uri else None)

    @property
    def enabled(self) -> bool:
        return self.cfg.tensorboard or self.mlflow is not None

    def log(self, step: int, scalars: Mapping[str, float], flush: bool = False) -> None:
        if self._closed or not scalars:
            return
        if self._tensorboard_on:
            try:
                if self._writer is None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    self._writer = self._factory(str(self.log_dir), purge_step=step)
                for tag, value in scalars.items():
                    self._writer.add_scalar(tag, value, global_step=step)
                if flush:
                    self._writer.flush()
            except Exception as e:
                self._tensorboard_on = False
                self._give_up("TensorBoard", e)
        if self.mlflow is not None:
            try:
                self.mlflow.log(step, scalars)
            except Exception as e:
                self.mlflow = None
                self._give_up("MLflow", e)

    def _give_up(self, backend: str, e: Exception) -> None:
        """A tracking backend that fails mid-run must not stop the training: say so, stop it."""
        log.warning(
            "%s logging failed (%s: %s); it is off for the rest of this run. metrics.jsonl in %s "
            "still gets every record.",
            backend,
            type(e).__name__,
            e,
            self.run_dir,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name, closer in (
            ("TensorBoard", self._writer.close if self._writer is not None else None),
            ("MLflow", self.mlflow.close if self.mlflow is not None else None),
        ):
            if closer is not None:
                try:
                    closer()
                except Exception as e:
                    self._give_up(name, e)


# --------------------------------------------------------------------------------------------
# Federated: one tracker per run directory in the server process

_round_trackers: dict[Path, Tracker] = {}


def log_round(run_dir: Path, cfg: LoggingConfig, rec: Mapping[str, Any]) -> None:
    """Write one federated round record (step = round) for ``run_dir``; flushed at once, since
    rounds are minutes apart. The server calls this for each record it emits."""
    key = Path(run_dir).absolute()
    tracker = _round_trackers.get(key)
    if tracker is None:
        tracker = _round_trackers[key] = Tracker(key, cfg)
    tracker.log(int(rec["round"]), round_scalars(rec), flush=True)


def close_round_trackers() -> None:
    """Close every federated tracker of this process (also run at interpreter exit)."""
    while _round_trackers:
        _, tracker = _round_trackers.popitem()
        tracker.close()


atexit.register(close_round_trackers)
