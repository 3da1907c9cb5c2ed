"""Distillation without Ray: the loss against a hand-computed example, and the teacher checks
(missing directory, other objective, other tokenizer) that stop a run before it starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from orchestrator.config import ConfigError, ModelConfig, PretrainJob, load_config
from orchestrator.data.tokenizer import train_bpe, train_wordpiece
from orchestrator.models import build_model, hf_config
from orchestrator.pretrain.distill import (
    check_teacher,
    distill_loss,
    kl_to_teacher,
    teacher_summary,
)

TEXTS = ["in the beginning god created the heaven and the earth"] * 30


def test_distill_loss_by_hand():
    # Position 0: teacher logits (2 ln 3, 0) at T=2 give p_t = (3/4, 1/4); the student's (0, 0)
    # give (1/2, 1/2). KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812.
    # Position 1 is masked out: its (very different) logits must not count.
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0]]])
    teacher = torch.tensor([[[2 * math.log(3), 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.130812, abs=1e-6)
    assert float(kl_to_teacher(student, teacher, mask, 2.0)) == pytest.approx(kl, rel=1e-6)
    # alpha T^2 KL + (1 - alpha) LM = 0.5 x 4 x 0.130812 + 0.5 x 1.0 = 0.761624
    loss = distill_loss(student, teacher, torch.tensor(1.0), mask, alpha=0.5, temperature=2.0)
    assert float(loss) == pytest.approx(0.5 * 4 * kl + 0.5, rel=1e-6)
    assert float(loss) == pytest.approx(0.761624, abs=1e-6)
    # alpha = 0: the student's own loss only; the same teacher gives no KL
    assert float(distill_loss(student, teacher, torch.tensor(1.0), mask, 0.0, 2.0)) == 1.0
    assert float(kl_to_teacher(teacher, teacher, torch.ones(1, 2, dtype=torch.bool), 1.0)) == 0


def test_kl_gradient_moves_the_student_towards_the_teacher():
    student = torch.zeros(1, 1, 3, requires_grad=True)
    teacher = torch.tensor([[[3.0, 0.0, 0.0]]])
    kl_to_teacher(student, teacher, torch.ones(1, 1, dtype=torch.bool), 1.0).backward()
    assert student.grad is not None and student.grad[0, 0, 0] < 0 < student.grad[0, 0, 1]


def save_model(d: Path, family: str, tok, objective: str) -> Path:
    cfg = hf_config(ModelConfig(family=family, n_layer=1, n_head=2, d_model=16), len(tok), 16, 0)
    build_model(cfg, objective=objective).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(TEXTS, 100)


def job(teacher: Path | str, *overrides: str) -> PretrainJob:
    return load_config(
        PretrainJob, "pretrain-bert-tiny", [f"distill.teacher={teacher}", *overrides]
    )


def test_a_matching_teacher_passes_and_dry_run_states_its_memory(tmp_path: Path, wordpiece):
    t = save_model(tmp_path / "t", "bert", wordpiece, "masked")
    j = job(t)
    check_teacher(j.distill, "masked", wordpiece, len(wordpiece))
    s = teacher_summary(j.distill)
    params = sum(p.numel() for p in build_model(None, path=str(t), objective="masked").parameters())
    # safetensors holds the tied MLM decoder once: the count is the model's own
    assert s["teacher_params"] == params
    assert s["teacher_memory_per_worker_mb"] == round(params * 4 / 2**20, 1)
    from orchestrator.pretrain.runner import launch_plan

    assert launch_plan(j)["distill"]["teacher"] == str(t)


def test_teacher_errors_name_distill_teacher(tmp_path: Path, wordpiece):
    with pytest.raises(ConfigError) as ei:
        check_teacher(job(tmp_path / "nowhere").distill, "masked", wordpiece, len(wordpiece))
    assert ei.value.key == "distill.teacher" and "no config.json" in str(ei.value)

    causal = save_model(tmp_path / "gpt", "gpt2", wordpiece, "causal")
    with pytest.raises(ConfigError) as ei:
        check_teacher(job(causal).distill, "masked", wordpiece, len(wordpiece))
    assert ei.value.key == "distill.teacher" and "share the objective" in str(ei.value)

    other = train_wordpiece([*TEXTS, "and the earth was without form and void"] * 2, 120)
    assert other.get_vocab() != wordpiece.get_vocab()
    mismatch = save_model(tmp_path / "other", "bert", other, "masked")
    with pytest.raises(ConfigError) as ei:
        check_teacher(job(mismatch).distill, "masked", wordpiece, len(wordpiece))
    assert ei.value.key == "distill.teacher" and "another tokenizer" in str(ei.value)

    bpe = train_bpe(TEXTS, 300)
    gpt = save_model(tmp_path / "gpt-bpe", "gpt2", bpe, "causal")
    check_teacher(job(gpt).distill, "causal", bpe, len(bpe))  # a causal pair is fine


def test_cli_missing_teacher_exits_2_before_anything_loads(tmp_path: Path, capsys):
    from orchestrator.cli import main

    argv = ["pretrain", f"distill.teacher={tmp_path / 'none'}", f"run.root={tmp_path / 'runs'}"]
    assert main(argv) == 2
    assert "distill.teacher" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
