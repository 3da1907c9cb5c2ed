"""Where a job runs and what it leaves behind: checkpoints, the Ray cluster, the run directory,
fault injection and logging."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.fields import require


@dataclass
class CheckpointConfig:
    """Periodic, atomic checkpoints (model, optimizer, scheduler, RNG, data position)."""

    every_steps: int = 100
    """Checkpoint every N steps (and always at the end)."""
    keep_last: int = 2
    """Keep the K most recent checkpoints."""

    def __post_init__(self) -> None:
        require(self.every_steps >= 1, self, "every_steps", "an integer >= 1")
        require(self.keep_last >= 1, self, "keep_last", "an integer >= 1")


@dataclass
class ClusterConfig:
    """Where Ray runs. No address = start an embedded local Ray and shut it down at the end."""

    address: str | None = None
    """Existing Ray cluster: ``auto``, ``HOST:PORT`` or ``ray://HOST:10001``. The cluster is left running."""
    num_cpus: int | None = None
    """CPUs given to an embedded Ray; ``None`` = all cores of this machine."""
    autoscaling: bool = False
    """The cluster adds nodes on demand (Ray autoscaler, KubeRay autoscaling). ``False``: a job
    that asks for more GPUs or CPUs than the cluster's nodes have fails up front (exit 2) instead
    of waiting for nodes that never come; ``True`` skips that check and lets Ray wait."""
    connect_timeout_s: float = 10.0
    """How long to wait for ``address`` to accept a TCP connection before failing (exit 2)."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None:
            require(self.num_cpus >= 1, self, "num_cpus", "an integer >= 1 or null")
        require(self.connect_timeout_s > 0, self, "connect_timeout_s", "a number of seconds > 0")


@dataclass
class RunConfig:
    """The run directory: resolved config, metrics.jsonl, checkpoints and the HF export."""

    name: str | None = None
    """Run name; re-running with the same name resumes from its latest checkpoint.
    ``None`` = ``<job>-<timestamp>``."""
    root: str = "runs"
    """Parent directory of runs (for multi-node clusters: a shared filesystem path)."""
    dir: str | None = None
    """Explicit run directory; overrides ``root``/``name`` (its last component becomes the name)."""
    max_failures: int = 0
    """Worker-group restarts from the latest checkpoint after a failure (-1 = unlimited)."""

    def __post_init__(self) -> None:
        require(self.max_failures >= -1, self, "max_failures", "an integer >= -1")
        if self.name is not None:
            require(
                bool(self.name) and "/" not in self.name,
                self,
                "name",
                "a non-empty name without '/'",
                "Use run.dir for a path.",
            )


@dataclass
class FaultConfig:
    """Fault injection, to rehearse recovery: one worker fails once at a chosen step."""

    fail_at_step: int | None = None
    """Step at which rank ``rank`` fails (once per run directory); ``None`` = never."""
    rank: int = 1
    """Which worker fails."""
    mode: str = "raise"
    """``raise`` an exception, or ``kill`` the worker process (``os._exit``)."""

    def __post_init__(self) -> None:
        require(self.mode in ("raise", "kill"), self, "mode", "'raise' or 'kill'")
        if self.fail_at_step is not None:
            require(self.fail_at_step >= 1, self, "fail_at_step", "an integer >= 1 or null")


@dataclass
class LoggingConfig:
    """Where a run's metrics go besides ``metrics.jsonl``, and how much the console shows.

    The same section serves ``fedray pretrain``, ``fedray simulate`` and ``fedray server``.
    """

    tensorboard: bool = True
    """Write TensorBoard event files to ``RUN_DIR/tensorboard`` (pretraining: the driver's metrics
    sink writes rank 0's step metrics; federated: the server writes each round's record), so
    ``tensorboard --logdir runs/`` shows every run. A resumed run adds event files next to the
    old ones. ``false`` logs a warning and writes none."""
    mlflow_uri: str | None = None
    """MLflow tracking URI to log the same scalars to (e.g. ``http://mlflow.example:5000`` or
    ``sqlite:////shared/mlflow.db``); ``None`` = off. Needs the extra:
    ``pip install 'fedray[mlflow]'`` (checked before anything starts)."""
    mlflow_experiment: str = "fedray"
    """MLflow experiment name the run is logged under (used only with ``mlflow_uri``)."""
    verbose: bool = False
    """Also show Ray, Flower, DeepSpeed and transformers start-up and info lines on the console
    (``--verbose`` sets it). Whatever the setting, ``RUN_DIR/run.log`` holds every console line,
    and errors are always shown."""

    def __post_init__(self) -> None:
        if self.mlflow_uri is not None:
            require(
                bool(self.mlflow_uri.strip()),
                self,
                "mlflow_uri",
                "an MLflow tracking URI (http://HOST:PORT, sqlite:///PATH, databricks, ...) or null",
            )
        require(bool(self.mlflow_experiment.strip()), self, "mlflow_experiment", "a non-empty name")
