"""Model factory, lr schedule and Hugging Face export: no Ray, no processes.

Checkpoint manifests and resume checks are in test_pretrain_checkpoint.py."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from orchestrator.config import ConfigError, ModelConfig
from orchestrator.export import export_hf
from orchestrator.models import build_model, hf_config
from orchestrator.pretrain.schedule import lr_factor


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_build_from_config(family: str):
    cfg = hf_config(ModelConfig(family=family, n_layer=2, n_head=4, d_model=64), 300, 32, eos_id=0)
    model = build_model(cfg)
    assert model.config.model_type == family
    assert model.config.vocab_size == 300
    x = torch.randint(0, 300, (2, 32))
    out = model(input_ids=x, labels=x)
    assert out.logits.shape == (2, 32, 300)
    assert math.isfinite(float(out.loss))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_llama_gqa_and_sizes():
    cfg = hf_config(
        ModelConfig(family="llama", n_layer=1, n_head=8, n_kv_head=2, d_model=64, d_ff=96),
        500,
        16,
        0,
    )
    assert (
        cfg.num_key_value_heads == 2
        and cfg.intermediate_size == 96
        and cfg.max_position_embeddings == 16
    )


def test_load_local_dir_and_refuse_hub_id(tmp_path: Path):
    cfg = hf_config(ModelConfig(n_layer=1, n_head=2, d_model=32), 300, 16, 0)
    build_model(cfg).save_pretrained(str(tmp_path / "m"))
    loaded = build_model(
        hf_config(ModelConfig(path=str(tmp_path / "m")), 0, 0, 0), path=str(tmp_path / "m")
    )
    assert loaded.config.n_embd == 32
    with pytest.raises(ConfigError, match="not a local Hugging Face model directory"):
        hf_config(ModelConfig(path="gpt2"), 0, 0, 0)


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, warmup=10, max_steps=110, min_ratio=0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))


def test_export_roundtrip_with_plain_transformers(tmp_path: Path):
    from orchestrator.data.tokenizer import train_bpe

    tok = train_bpe(["hello world, hello export.\n" * 50], vocab_size=280)
    cfg = hf_config(ModelConfig(n_layer=1, n_head=2, d_model=32), len(tok), 16, tok.eos_token_id)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = export_hf(model.state_dict(), cfg, tok, tmp_path / "export")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    again = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    x = torch.randint(0, len(tok), (1, 16))
    assert torch.allclose(model(x).logits, again(x).logits, atol=1e-6)
    bad = {k: v for k, v in model.state_dict().items() if "h.0.attn" not in k}
    with pytest.raises(RuntimeError, match="does not match the model"):
        export_hf(bad, cfg, tok, tmp_path / "export2")


def test_activation_checkpointing_switches_on_the_models_own_and_keeps_the_maths():
    from orchestrator.config import PretrainJob, load_config
    from orchestrator.pretrain.loop import seed_everything, worker_model

    def grads(*overrides: str) -> tuple[torch.nn.Module, float, list[torch.Tensor]]:
        small = ["model.n_layer=2", "model.d_model=32", "model.n_head=2"]
        job = load_config(PretrainJob, None, [*small, *overrides], default_preset="pretrain-tiny")
        cfg = hf_config(job.model, 64, 16, 0).to_dict()
        seed_everything(0)
        model = worker_model(job, cfg)
        model.train()
        x = torch.randint(0, 64, (2, 16))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return model, float(loss), [p.grad.clone() for p in model.parameters()]

    plain, loss_a, ga = grads()
    ckpt, loss_b, gb = grads("train.activation_checkpointing=true")
    assert not plain.is_activation_checkpointing and ckpt.is_activation_checkpointing
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pretrained_load_reports_missing_body_weights_and_hides_the_hf_table(tmp_path, caplog):
    """A classification head missing from a causal LM is expected (one info line); a body
    weight missing from model.path (wrong directory, other depth) is a warning naming it."""
    import logging

    from transformers import AutoModelForSequenceClassification

    from orchestrator.contract.model import classification_config, load_pretrained

    small = ModelConfig(family="gpt2", n_layer=1, n_head=2, d_model=32)
    AutoModelForCausalLM.from_config(hf_config(small, 64, 16, 0)).save_pretrained(tmp_path)
    deeper = hf_config(ModelConfig(family="gpt2", n_layer=2, n_head=2, d_model=32), 64, 16, 0)
    cfg = classification_config(deeper, ["a", "b"], 0)
    with caplog.at_level(logging.INFO, logger="orchestrator.contract.model"):
        model = load_pretrained(AutoModelForSequenceClassification, str(tmp_path), cfg)
    assert model.config.n_layer == 2
    assert "new classification head ['score.weight']" in caplog.text
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "transformer.h.1." in warned[0].getMessage()
    assert "LOAD REPORT" not in caplog.text
