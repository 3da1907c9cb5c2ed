"""Knowledge distillation during pretraining (the ``distill`` section of ``fedray pretrain``).

A teacher (a local Hugging Face directory, e.g. another run's ``export/``) runs in inference
mode next to the student on every worker; the student's loss mixes the KL divergence to the
teacher's temperature-softened distribution with its own LM loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.fields import require


@dataclass
class DistillConfig:
    """Distill a teacher into the student being pretrained. ``teacher`` unset = off."""

    teacher: str | None = None
    """Local Hugging Face model directory of the teacher (``config.json``, weights and its
    tokenizer, which must be the one the student trains with). ``None`` = no distillation."""
    alpha: float = 0.9
    """Weight of the distillation term: loss = alpha x T^2 x KL(teacher_T || student_T) +
    (1 - alpha) x the student's own LM loss (Hinton et al.'s T^2 keeps gradient sizes
    comparable across temperatures). 0.9 with T = 1 closed 98% of a half-depth student's
    perplexity gap to its teacher; 0.5 with T = 2 closed none (BENCHMARKS.md, Distillation)."""
    temperature: float = 1.0
    """Softmax temperature T applied to both teacher and student logits in the KL term."""

    def __post_init__(self) -> None:
        require(0.0 <= self.alpha <= 1.0, self, "alpha", "a float in [0, 1]")
        require(self.temperature > 0.0, self, "temperature", "a float > 0")
        if self.teacher is not None:
            require(bool(self.teacher.strip()), self, "teacher", "a local directory or null")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)
