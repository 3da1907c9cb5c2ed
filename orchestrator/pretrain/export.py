"""The model weights of a pretraining checkpoint, for the final export (written by
:func:`orchestrator.export.export_hf`)."""

from __future__ import annotations

import torch

from orchestrator.pretrain.checkpoint import CheckpointInfo, check_safe


def checkpoint_model_state(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """Full (unsharded) model weights of a verified checkpoint of either backend."""
    check_safe(info)  # DeepSpeed's ZeRO consolidation unpickles with weights_only=False
    if info.backend == "deepspeed":
        from orchestrator.pretrain.backends.deepspeed import load_model_state as ds_state

        return ds_state(info.path)
    from orchestrator.pretrain.backends.ddp import load_model_state

    return load_model_state(info.path)
