"""Typed configuration sections shared by every fedray job.

Each section is a dataclass: OmegaConf uses it as the schema (unknown keys and wrong types are
rejected with the full key path) and ``__post_init__`` checks values that a type cannot express.
Cross-section rules (e.g. the global batch must split evenly over workers) live in
``PretrainJob.__post_init__``. Errors are :class:`FieldError`; the loader adds the key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class FieldError(ValueError):
    """A config value that is well-typed but not allowed.

    ``field`` is the name inside the section; the loader turns it into a full key path.
    """

    def __init__(self, owner: object, field: str, value: Any, allowed: str, fix: str = ""):
        self.owner = type(owner)
        self.field = field
        self.value = value
        self.allowed = allowed
        self.fix = fix
        super().__init__(f"{field}={value!r}: expected {allowed}" + (f". {fix}" if fix else ""))


def require(ok: bool, owner: object, name: str, allowed: str, fix: str = "") -> None:
    if not ok:
        raise FieldError(owner, name, getattr(owner, name), allowed, fix)


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class ModelConfig:
    """Which causal LM to train: built from the fields below, or loaded from a local HF dir."""

    family: str = "gpt2"
    """Architecture when building from scratch: ``gpt2`` or ``llama``. Ignored when ``path`` is set."""
    path: str | None = None
    """Local Hugging Face model directory (``config.json`` + weights). No hub access: a hub id
    such as ``gpt2`` is refused. When set, the size fields below are ignored."""
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    n_kv_head: int | None = None
    """Key/value heads (llama only, grouped-query attention); ``None`` = ``n_head``."""
    d_model: int = 128
    """Hidden size."""
    d_ff: int | None = None
    """MLP inner size; ``None`` = 4 x ``d_model`` (gpt2) or 8/3 x ``d_model`` rounded (llama)."""
    max_position: int | None = None
    """Maximum sequence length; ``None`` = ``data.block_size``."""
    dropout: float = 0.0
    """Dropout probability (gpt2: residual, embedding and attention dropout)."""
    tie_embeddings: bool = True
    """Share input and output embedding matrices."""

    def __post_init__(self) -> None:
        require(self.family in ("gpt2", "llama"), self, "family", "'gpt2' or 'llama'")
        for name in ("n_layer", "n_head", "d_model"):
            require(getattr(self, name) >= 1, self, name, "an integer >= 1")
        require(
            self.d_model % self.n_head == 0,
            self,
            "d_model",
            f"a multiple of model.n_head={self.n_head}",
            "Change model.d_model or model.n_head.",
        )
        if self.n_kv_head is not None:
            require(
                self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
                self,
                "n_kv_head",
                f"a divisor of model.n_head={self.n_head}",
            )
        if self.d_ff is not None:
            require(self.d_ff >= 1, self, "d_ff", "an integer >= 1 or null")
        if self.max_position is not None:
            require(self.max_position >= 1, self, "max_position", "an integer >= 1 or null")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "a float in [0, 1)")


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class TokenizerConfig:
    """Tokenizer: loaded from a local HF directory, or a byte-level BPE trained on the data."""

    path: str | None = None
    """Local tokenizer directory (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``).
    ``None`` = train a byte-level BPE on the training text (cached, and saved with the run)."""
    vocab_size: int = 2048
    """Vocabulary size when training a tokenizer."""

    def __post_init__(self) -> None:
        require(
            256 + 1 <= self.vocab_size <= 1_000_000,
            self,
            "vocab_size",
            "an integer in [257, 1000000] (byte-level BPE needs the 256 byte tokens + specials)",
        )


@dataclass
class DataConfig:
    """Training text. ``paths`` empty = the bundled demo corpus."""

    paths: list[str] = field(default_factory=list)
    """Local files or directories: ``.txt``, ``.jsonl``/``.json``, ``.csv``, ``.parquet``.
    Directories are searched recursively for those suffixes. Empty = bundled demo corpus."""
    text_field: str = "text"
    """Column/key holding the text in jsonl/csv/parquet files."""
    label_field: str = "label"
    """Column holding class labels (sequence classification in federated fine-tuning)."""
    block_size: int = 128
    """Tokens per training sequence; documents are concatenated and packed into blocks."""
    val_fraction: float = 0.05
    """Fraction of packed blocks held out for validation (perplexity)."""
    cache_dir: str = "~/.cache/fedray"
    """Where tokenized, packed datasets and trained tokenizers are cached (keyed by content)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    num_proc: int | None = None
    """Processes that tokenize the corpus into the cache (pretraining); ``None`` = one per CPU
    (up to 8) for corpora over 16 MB, else 1 (in-process). With ``cluster.address`` set: Ray
    tasks over the cluster's nodes (``None`` = its CPUs, up to 32). The cache is the same either
    way."""

    def __post_init__(self) -> None:
        require(self.block_size >= 8, self, "block_size", "an integer >= 8")
        require(
            self.num_proc is None or self.num_proc >= 1, self, "num_proc", "null or an integer >= 1"
        )
        require(0.0 < self.val_fraction < 0.5, self, "val_fraction", "a float in (0, 0.5)")


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """Optimisation. The global batch is split as micro_batch x workers x accumulation."""

    max_steps: int = 300
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    global_batch_size: int = 16
    """Sequences per optimizer step, summed over all workers and accumulation steps."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one worker."""
    grad_accum_steps: int | None = None
    """Micro-batches accumulated per step on each worker; ``None`` = derived from the batch sizes."""
    lr: float = 1e-3
    """Peak learning rate (reached after warmup)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio`` at ``max_steps``."""
    warmup_steps: int = 30
    """Linear warmup steps from 0 to ``lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (logs a warning)."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``."""
    seed: int = 1234
    """Seeds model init, data order and dropout."""
    log_every: int = 10
    """Print a progress line every N steps (every step goes to metrics.jsonl)."""
    eval_every: int = 100
    """Validation loss/perplexity every N steps and at the end; 0 = only at the end."""
    eval_batches: int = 8
    """Micro-batches per validation pass on each worker."""
    activation_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of keeping
    them (the Hugging Face model's gradient checkpointing; DDP and DeepSpeed): less memory,
    about one more forward pass of compute per step. Same losses."""

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, self, "max_steps", "an integer >= 1")
        require(self.global_batch_size >= 1, self, "global_batch_size", "an integer >= 1")
        require(self.micro_batch_size >= 1, self, "micro_batch_size", "an integer >= 1")
        if self.grad_accum_steps is not None:
            require(self.grad_accum_steps >= 1, self, "grad_accum_steps", "an integer >= 1 or null")
        require(self.lr > 0, self, "lr", "a float > 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, self, "min_lr_ratio", "a float in [0, 1]")
        require(self.warmup_steps >= 0, self, "warmup_steps", "an integer >= 0")
        require(self.weight_decay >= 0, self, "weight_decay", "a float >= 0")
        require(0 <= self.beta1 < 1, self, "beta1", "a float in [0, 1)")
        require(0 <= self.beta2 < 1, self, "beta2", "a float in [0, 1)")
        require(self.grad_clip >= 0, self, "grad_clip", "a float >= 0 (0 disables clipping)")
        require(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            self,
            "precision",
            "'auto', 'fp32', 'bf16' or 'fp16'",
        )
        require(self.log_every >= 1, self, "log_every", "an integer >= 1")
        require(self.eval_every >= 0, self, "eval_every", "an integer >= 0")
        require(self.eval_batches >= 1, self, "eval_batches", "an integer >= 1")


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 2
    """Training processes (one per GPU on GPU clusters)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL backend. ``False`` = CPU workers over gloo."""
    cpus_per_worker: int = 1
    """CPU cores reserved for each worker."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, self, "num_workers", "an integer >= 1")
        require(self.cpus_per_worker >= 1, self, "cpus_per_worker", "an integer >= 1")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed settings, used when ``backend=deepspeed``."""

    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer states (and the optimizer step) on CPU. Needs ``zero_stage`` >= 1: DeepSpeed
    offloads the ZeRO partitions. With ``optimizer=deepspeed`` this builds cpu_adam on first use
    (~2 min, ~10 GB RAM); with ``torch`` AdamW steps the offloaded states (no build, slower)."""
    offload_params: bool = False
    """Keep parameters on CPU (ZeRO-3 only: only stage 3 partitions parameters)."""
    optimizer: str = "torch"
    """``torch`` (torch.optim.AdamW given to DeepSpeed; no JIT build) or ``deepspeed`` (DeepSpeed's
    own fused/CPU Adam, JIT-compiled on first use)."""
    config_file: str | None = None
    """A user DeepSpeed JSON merged over the generated one for advanced options; keys that conflict
    with the typed config are reported as errors, not silently overridden."""

    def __post_init__(self) -> None:
        require(self.zero_stage in (0, 1, 2, 3), self, "zero_stage", "0, 1, 2 or 3")
        require(
            self.optimizer in ("torch", "deepspeed"), self, "optimizer", "'torch' or 'deepspeed'"
        )
        require(
            not self.offload_optimizer or self.zero_stage >= 1,
            self,
            "offload_optimizer",
            f"false with deepspeed.zero_stage={self.zero_stage} (offload moves ZeRO partitions)",
            "Set deepspeed.zero_stage=1, 2 or 3, or deepspeed.offload_optimizer=false.",
        )
        require(
            not self.offload_params or self.zero_stage == 3,
            self,
            "offload_params",
            f"false with deepspeed.zero_stage={self.zero_stage} (only ZeRO-3 partitions parameters)",
            "Set deepspeed.zero_stage=3, or deepspeed.offload_params=false.",
        )


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


# --------------------------------------------------------------------------------------------
# Jobs


@dataclass
class PretrainJob:
    """``fedray pretrain``: cluster pretraining with Ray Train (DDP or DeepSpeed)."""

    backend: str = "ddp"
    """``ddp`` (torch DistributedDataParallel) or ``deepspeed`` (ZeRO, see the deepspeed section)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        require(self.backend in ("ddp", "deepspeed"), self, "backend", "'ddp' or 'deepspeed'")
        t, w = self.train, self.scaling.num_workers
        per_step = t.micro_batch_size * w
        if t.grad_accum_steps is None:
            if t.global_batch_size % per_step:
                raise FieldError(
                    t,
                    "global_batch_size",
                    t.global_batch_size,
                    f"a multiple of train.micro_batch_size x scaling.num_workers "
                    f"= {t.micro_batch_size} x {w} = {per_step}",
                    f"Set train.global_batch_size={per_step * max(1, t.global_batch_size // per_step)} "
                    "or change train.micro_batch_size.",
                )
        elif t.global_batch_size != per_step * t.grad_accum_steps:
            raise FieldError(
                t,
                "global_batch_size",
                t.global_batch_size,
                f"train.micro_batch_size x scaling.num_workers x train.grad_accum_steps = "
                f"{t.micro_batch_size} x {w} x {t.grad_accum_steps} = {per_step * t.grad_accum_steps}",
                "Fix one of the four values, or set train.grad_accum_steps=null to derive it.",
            )
        if self.fault.fail_at_step is not None:
            require(
                0 <= self.fault.rank < w,
                self.fault,
                "rank",
                f"a worker rank in [0, {w - 1}] (scaling.num_workers={w})",
            )
        if self.train.precision in ("bf16", "fp16") and not self.scaling.use_gpu:
            require(
                False,
                self.train,
                "precision",
                "'auto' or 'fp32' on CPU workers",
                "Mixed precision needs scaling.use_gpu=true.",
            )

    @property
    def grad_accum_steps(self) -> int:
        t = self.train
        if t.grad_accum_steps is not None:
            return t.grad_accum_steps
        return t.global_batch_size // (t.micro_batch_size * self.scaling.num_workers)
