"""Cluster pretraining on Ray Train (DDP or DeepSpeed ZeRO)."""

from orchestrator.pretrain.runner import PretrainResult, launch_plan, pretrain

__all__ = ["PretrainResult", "launch_plan", "pretrain"]
