"""Knowledge distillation during pretraining: the loss (a pure function), the teacher every
worker runs in inference mode, and the checks made on the driver before anything starts.

loss = alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) x LM loss,
the KL averaged over the positions the objective trains (masked: the masked tokens, as
DistilBERT; causal: every position). The T^2 factor (Hinton et al., 2015) keeps the soft
term's gradients on the scale of the hard one's as T changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.config.distill import DistillConfig
from orchestrator.config.loader import ConfigError


def kl_to_teacher(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over the ``mask`` positions of KL(p_teacher || p_student), both softened by T."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (t.exp() * (t - s)).sum(dim=-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1.0)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    lm_loss: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL + (1 - alpha) * lm_loss`` (see the module docstring)."""
    kl = kl_to_teacher(student_logits, teacher_logits, mask, temperature)
    return alpha * temperature**2 * kl + (1.0 - alpha) * lm_loss


def load_teacher(cfg: DistillConfig, objective: str, device: torch.device) -> torch.nn.Module:
    """The teacher on this worker's device, in eval mode with no gradients (inference only)."""
    from orchestrator.models import build_model

    teacher = build_model(None, path=cfg.teacher, objective=objective)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def teacher_summary(cfg: DistillConfig) -> dict[str, Any]:
    """What ``--dry-run`` shows: the teacher, its size and the memory it takes on each worker
    (fp32 weights; activations of one micro-batch come on top, no gradients or optimizer)."""
    from safetensors import safe_open

    d = Path(cfg.teacher or "").expanduser()
    params = 0
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            keys = st.keys()  # safe_open is not iterable
            params += sum(math.prod(st.get_slice(k).get_shape()) for k in keys)
    return {
        "teacher": str(d),
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "teacher_params": params,
        "teacher_memory_per_worker_mb": round(params * 4 / 2**20, 1),
        "mode": "inference only, a full copy on every worker (not sharded by ZeRO)",
    }


def check_teacher(cfg: DistillConfig, objective: str, tokenizer: Any, vocab_size: int) -> None:
    """Before launch: the teacher is a local model of the student's objective that reads the
    student's tokenizer (same vocabulary, same ids) and predicts over as many tokens."""
    from transformers import AutoConfig

    from orchestrator.data.tokenizer import load_tokenizer
    from orchestrator.models import is_encoder

    d = Path(cfg.teacher or "").expanduser()
    if not (d / "config.json").is_file():
        raise ConfigError(
            f"distill.teacher={cfg.teacher!r} is not a local Hugging Face model directory (no "
            "config.json). Use the export/ directory of a fedray pretrain run, or a "
            "save_pretrained directory; hub ids cannot be downloaded here.",
            "distill.teacher",
        )
    config = AutoConfig.from_pretrained(str(d), local_files_only=True)
    if is_encoder(config) != (objective == "masked"):
        kind = "a masked-LM encoder" if is_encoder(config) else "a causal LM"
        raise ConfigError(
            f"distill.teacher={cfg.teacher!r} is {kind} ({config.model_type}), but the student "
            f"trains with train.objective={objective}: teacher and student must share the "
            "objective. Pick a teacher of the same kind, or change train.objective.",
            "distill.teacher",
        )
    if not any((d / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise ConfigError(
            f"distill.teacher={cfg.teacher!r} holds no tokenizer, so fedray cannot check that it "
            "reads the same token ids as the student. Save the teacher's tokenizer in it.",
            "distill.teacher",
        )
    own = load_tokenizer(d)
    if own.get_vocab() != tokenizer.get_vocab() or config.vocab_size != vocab_size:
        raise ConfigError(
            f"distill.teacher={cfg.teacher!r} uses another tokenizer than the student "
            f"({len(own)} tokens, embeddings for {config.vocab_size}; the student's has "
            f"{len(tokenizer)}, embeddings for {vocab_size}): the distributions would be over "
            f"different tokens. Set data.tokenizer.path={cfg.teacher}.",
            "distill.teacher",
        )
