"""Typed configuration sections shared by every fedray job, and the pretraining job that
composes them.

Each section is a dataclass: OmegaConf uses it as the schema (unknown keys and wrong types are
rejected with the full key path) and ``__post_init__`` checks values that a type cannot express.
The sections live by what they configure and are re-exported here:

- :mod:`~orchestrator.config.model_data`: ``model``, ``data`` (+ ``data.tokenizer``): what is
  trained and on what (pretraining, simulation and real sites alike);
- :mod:`~orchestrator.config.training`: ``train``, ``scaling``, ``deepspeed``: how pretraining
  optimises, on how many workers, with which backend settings;
- :mod:`~orchestrator.config.run`: ``checkpoint``, ``cluster``, ``run``, ``fault``, ``logging``:
  where a job runs and what it leaves behind.

Cross-section rules (e.g. the global batch must split evenly over workers) live in
``PretrainJob.__post_init__``. Errors are :class:`FieldError` (:mod:`~orchestrator.config.fields`);
the loader adds the key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config.distill import DistillConfig
from orchestrator.config.fields import FieldError, require
from orchestrator.config.model_data import (
    ENCODER_FAMILIES,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
)
from orchestrator.config.run import (
    CheckpointConfig,
    ClusterConfig,
    FaultConfig,
    LoggingConfig,
    RunConfig,
)
from orchestrator.config.training import DeepSpeedConfig, ScalingConfig, TrainConfig

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "DataConfig",
    "DeepSpeedConfig",
    "DistillConfig",
    "FaultConfig",
    "FieldError",
    "LoggingConfig",
    "ModelConfig",
    "PretrainJob",
    "RunConfig",
    "ScalingConfig",
    "TokenizerConfig",
    "TrainConfig",
    "require",
]


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
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        require(self.backend in ("ddp", "deepspeed"), self, "backend", "'ddp' or 'deepspeed'")
        check_objective(self.model, self.train)
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


def check_objective(model: ModelConfig, train: TrainConfig) -> None:
    """An encoder family trains only with the masked objective, a decoder only with the causal
    one (a model from ``model.path`` is checked against its config.json before launch)."""
    if model.path:
        return
    encoder = model.family in ENCODER_FAMILIES
    if encoder and train.objective != "masked":
        raise FieldError(
            train,
            "objective",
            train.objective,
            f"'masked' with model.family={model.family} (an encoder sees every token: a "
            "next-token loss would be trivial)",
            "Set train.objective=masked, or model.family=gpt2 or llama.",
        )
    if not encoder and train.objective == "masked":
        raise FieldError(
            train,
            "objective",
            train.objective,
            f"'causal' with model.family={model.family} (a causal decoder cannot see the tokens "
            "after a mask)",
            "Set model.family=bert for masked-LM pretraining, or train.objective=causal.",
        )
