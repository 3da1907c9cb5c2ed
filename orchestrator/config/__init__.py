"""Typed, validated job configuration (OmegaConf structured configs + YAML presets)."""

from orchestrator.config.loader import (
    ConfigError,
    load_config,
    load_dictconfig,
    preset_names,
    to_job,
    to_yaml,
)
from orchestrator.config.schema import (
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    DeepSpeedConfig,
    FaultConfig,
    FieldError,
    ModelConfig,
    PretrainJob,
    RunConfig,
    ScalingConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "DeepSpeedConfig",
    "FaultConfig",
    "FieldError",
    "ModelConfig",
    "PretrainJob",
    "RunConfig",
    "ScalingConfig",
    "TokenizerConfig",
    "TrainConfig",
    "load_config",
    "load_dictconfig",
    "preset_names",
    "to_job",
    "to_yaml",
]
