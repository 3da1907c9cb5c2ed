"""Masked-LM pretraining of a tiny BERT on real Ray Train workers (2 workers, DDP over gloo),
its export loaded as a masked LM and as a classifier that the federation fine-tunes, resume
after a worker failure (DDP, and DeepSpeed ZeRO-3 with its sharded checkpoint and consolidated
export), and a short distillation run with that export as the teacher.

One pretraining run is shared (module fixture): each Ray ``fit()`` costs 20-30 s on 2 cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from clients.client_app import app as client_app
from orchestrator.baseline.centralized import centralized
from orchestrator.config import PretrainJob, load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.pretrain import PretrainResult, pretrain
from tests.integration.pretrain_jobs import events, step_values

pytestmark = pytest.mark.integration

STEPS = 10


def bert_job(root: Path, cache: Path, name: str, *overrides: str) -> PretrainJob:
    """The pretrain-bert-tiny preset shrunk: 2 layers, d_model 64, 32-token blocks, WordPiece
    vocab 512, global batch 8 = 2 workers x micro 4, a checkpoint every 5 steps."""
    return load_config(
        PretrainJob,
        "pretrain-bert-tiny",
        [
            "model.d_model=64",
            "model.n_head=2",
            "data.block_size=32",
            "data.tokenizer.vocab_size=512",
            f"data.cache_dir={cache}",
            f"train.max_steps={STEPS}",
            "train.global_batch_size=8",
            "train.micro_batch_size=4",
            "train.warmup_steps=1",
            "train.lr=5e-3",
            "train.eval_every=0",
            "checkpoint.every_steps=5",
            f"run.root={root}",
            f"run.name={name}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def mlm(ray_local: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    root = tmp_path_factory.mktemp("mlm-runs")
    return root, pretrain(bert_job(root, cache_dir, "bert"))


def test_mlm_pretrain_exports_a_masked_lm_the_federation_fine_tunes(
    mlm: tuple[Path, PretrainResult], cache_dir: Path, tmp_path: Path
):
    _, result = mlm
    losses = step_values(result)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = [losses[s] for s in (1, 2, 3)], [losses[s] for s in (8, 9, 10)]
    assert sum(last) < sum(first) - 0.6, losses  # ~40 masked tokens a step: noisy, so 3 steps
    final = [m for m in result.metrics if "val_loss" in m]
    assert final[-1]["step"] == STEPS and final[-1]["val_loss"] < math.log(512) - 0.2

    export = result.export_dir
    tok = AutoTokenizer.from_pretrained(export)
    mlm_model = AutoModelForMaskedLM.from_pretrained(export).eval()
    assert type(mlm_model).__name__ == "BertForMaskedLM" and tok.mask_token == "[MASK]"
    ids = tok("and god said , let there be [MASK] .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = mlm_model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    clf = AutoModelForSequenceClassification.from_pretrained(export, num_labels=3)
    assert clf(input_ids=ids).logits.shape == (1, 3)

    # The export as model.path of a federation (LoRA defaults for bert) and of --centralized.
    ensure_task_identity()
    small = [
        f"model.path={export}",
        "data.tokenizer.path=null",
        f"data.cache_dir={cache_dir}",
        "task.max_length=32",
        "partition.max_examples_per_site=24",
        "train.micro_batch_size=8",
        "finetune.mode=lora",
        "finetune.local_steps=2",
        "federation.num_rounds=1",
        "federation.eval_every=1",
    ]
    fed_job = load_config(FederatedJob, "simulate-demo", [*small, f"run.dir={tmp_path / 'fed'}"])
    sites = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    fed = run_federated(LocalGrid(client_app, sites), fed_job, tmp_path / "fed")
    last = fed.rounds[-1]
    assert last["round"] == 1 and 0.0 <= last["eval"]["macro-f1"] <= 1.0
    assert all("train-loss" in s for s in last["sites"].values())
    base = centralized(
        load_config(FederatedJob, "simulate-demo", [*small, f"run.dir={tmp_path / 'central'}"])
    )
    assert base.rounds[-1]["eval"]["accuracy"] > 0
    assert (tmp_path / "central" / "export" / "config.json").is_file()


def test_resume_after_a_worker_failure_masks_as_the_uninterrupted_run(
    mlm: tuple[Path, PretrainResult], cache_dir: Path
):
    """Rank 1 fails before step 6; Ray restarts the group from checkpoint 5: the same masks
    and the same losses as the uninterrupted run."""
    root, ref = mlm
    result = pretrain(
        bert_job(root, cache_dir, "restart", "fault.fail_at_step=5", "run.max_failures=1")
    )
    assert any("resumed from checkpoint_00000005 at step 5" in e for e in events(result))
    want, got = step_values(ref), step_values(result)
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step


def test_zero3_masked_resumes_and_exports_as_ddp(mlm: tuple[Path, PretrainResult], cache_dir: Path):
    """DeepSpeed ZeRO-3 (torch AdamW, no JIT build) runs the masked objective: rank 1 fails
    before step 6, Ray restarts the group from the sharded checkpoint 5, and every step's loss
    equals the uninterrupted DDP run's; the consolidated export is DDP's masked LM. (ZeRO-3
    partitions what ZeRO-2 does plus the parameters: its checkpoint and export are the
    stage-specific paths; the causal objective covers stages 1-3 in test_deepspeed.py.)"""
    root, ref = mlm
    over = ("backend=deepspeed", "deepspeed.zero_stage=3", "fault.fail_at_step=5")
    result = pretrain(bert_job(root, cache_dir, "zero3", *over, "run.max_failures=1"))
    assert any("resumed from checkpoint_00000005 at step 5" in e for e in events(result))
    want, got = step_values(ref), step_values(result)
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), step
    zero3 = AutoModelForMaskedLM.from_pretrained(result.export_dir)
    ddp = AutoModelForMaskedLM.from_pretrained(ref.export_dir).state_dict()
    assert type(zero3).__name__ == "BertForMaskedLM"
    for k, v in zero3.state_dict().items():
        torch.testing.assert_close(v, ddp[k], rtol=1e-3, atol=1e-4, msg=k)


def test_distill_a_smaller_student_from_the_export(
    mlm: tuple[Path, PretrainResult], cache_dir: Path
):
    root, teacher = mlm
    result = pretrain(
        bert_job(
            root,
            cache_dir,
            "student",
            "model.n_layer=1",
            f"distill.teacher={teacher.export_dir}",
            f"data.tokenizer.path={teacher.export_dir}",
            "train.max_steps=3",
        )
    )
    rows = [m for m in result.metrics if "lm_loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert all(m["loss"] != m["lm_loss"] for m in rows)  # the KL term is in the loss
    student = AutoModelForMaskedLM.from_pretrained(result.export_dir)
    assert student.config.num_hidden_layers == 1
