"""A BERT encoder in the federation, without Ray: LoRA defaults for the bert family, and the
config errors for a causal-LM task on an encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, ModelConfig, load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.contract.model import ModelSpec, build, classification_config, trainable_names
from orchestrator.data.tokenizer import train_wordpiece
from orchestrator.models import build_model, hf_config

TEXTS = ["the flight was late again", "great show at coachella", "self driving cars"] * 20


def bert_classifier_spec(finetune: str) -> ModelSpec:
    cfg = hf_config(ModelConfig(family="bert", n_layer=2, n_head=2, d_model=32), 120, 32, 3, 0)
    cfg = classification_config(cfg, ["negative", "neutral", "positive"], 0)
    return ModelSpec(task="classification", hf_config=cfg.to_dict(), finetune=finetune)


def test_lora_defaults_for_bert_adapt_the_encoder_and_train_the_new_head_in_full():
    names = trainable_names(build(bert_classifier_spec("lora")))
    lora = [n for n in names if ".lora_" in n]
    adapted = {n.split(".lora_")[0].split("layer.")[1].split(".", 1)[1] for n in lora}
    assert adapted == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert len(lora) == 2 * 2 * 6  # A and B, 2 layers, 6 modules
    full = [n for n in names if ".lora_" not in n]
    assert sorted(full) == sorted(
        [
            "base_model.model.bert.pooler.modules_to_save.default.dense.weight",
            "base_model.model.bert.pooler.modules_to_save.default.dense.bias",
            "base_model.model.classifier.modules_to_save.default.weight",
            "base_model.model.classifier.modules_to_save.default.bias",
        ]
    )
    every = trainable_names(build(bert_classifier_spec("full")))
    assert len(names) < len(every) and "classifier.weight" in every


def sim(*overrides: str) -> FederatedJob:
    return load_config(FederatedJob, "simulate-demo", list(overrides))


def test_causal_lm_task_on_a_bert_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as ei:
        sim("model.path=null", "model.family=bert", "task.kind=causal_lm")
    assert ei.value.key == "task.kind" and "encoder" in str(ei.value)
    sim("model.path=null", "model.family=bert")  # classification from scratch is fine

    tok = train_wordpiece(TEXTS, 100)
    d = tmp_path / "bert"
    cfg = hf_config(ModelConfig(family="bert", n_layer=1, n_head=2, d_model=16), len(tok), 64, 3)
    build_model(cfg, objective="masked").save_pretrained(str(d))
    tok.save_pretrained(str(d))
    from orchestrator.federated.setup import check_inputs

    check_inputs(sim(f"model.path={d}", "data.tokenizer.path=null"))  # classification: fine
    with pytest.raises(ConfigError) as ei:
        check_inputs(sim(f"model.path={d}", "data.tokenizer.path=null", "task.kind=causal_lm"))
    assert ei.value.key == "task.kind" and "masked-LM encoder" in str(ei.value)
