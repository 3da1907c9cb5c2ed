"""The site task: declared once, encoded into a ConfigRecord and decoded (and validated) back."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord

from orchestrator.config.federated import PartitionConfig, SiteTrainConfig
from orchestrator.contract.model import ModelSpec
from orchestrator.contract.task import SiteTask, key_of


def task(**changes) -> SiteTask:
    base = SiteTask(
        spec=ModelSpec(task="classification", hf_config={"model_type": "gpt2", "n_layer": 1}),
        tokenizer_json="{}",
        text_field="text",
        label_field="label",
        max_length=32,
        train=SiteTrainConfig(micro_batch_size=4, lr=3e-4, beta1=0.8),
        local_epochs=2,
        partition=PartitionConfig(kind="dirichlet", alpha=0.3, max_examples_per_site=None),
        labels=("neg", "pos"),
        local_steps=5,
        partition_seed=7,
        server_round=3,
    )
    return dataclasses.replace(base, **changes)


def test_round_trip_is_exact_and_keys_come_from_field_names():
    t = task()
    rec = t.to_record()
    assert rec["train.beta1"] == 0.8 and rec["local-steps"] == 5 and rec["server-round"] == 3
    assert rec["partition.kind"] == "dirichlet" and rec["labels"] == ["neg", "pos"]
    assert "partition.max-examples-per-site" not in rec  # None travels as an absent key
    back = SiteTask.from_record(rec)
    assert back == t
    assert back.partition.max_examples_per_site is None
    # Every leaf field of the train section has a key: adding a field needs nothing else.
    for f in dataclasses.fields(SiteTrainConfig):
        assert f"train.{key_of(f.name)}" in rec


def test_strategy_keys_reach_the_task():
    rec = task().to_record()
    rec["proximal-mu"] = 0.25  # what FedProx adds to each train message
    assert SiteTask.from_record(rec).proximal_mu == 0.25


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("train.lr", "0.1", "train.lr: expected float, got str"),
        ("local-steps", 2.5, "local-steps: expected int, got float"),
        ("local-steps", True, "local-steps: expected int, got bool"),
        ("labels", "neg,pos", "labels: expected a list"),
        ("partition.kind", "random", "partition.kind='random': expected one of"),
    ],
)
def test_wrong_types_are_refused_naming_the_key(key, value, expect):
    rec = task().to_record()
    rec[key] = value
    with pytest.raises(ValueError, match=expect.replace("(", r"\(").replace("[", r"\[")):
        SiteTask.from_record(rec)


def test_values_the_config_section_forbids_are_refused_at_the_site():
    rec = task().to_record()
    rec["train.lr"] = -1.0  # a hostile or broken server: the section's own check runs
    with pytest.raises(ValueError, match="lr"):
        SiteTask.from_record(rec)


def test_missing_key_says_how_to_fix():
    rec = dict(task().to_record().items())
    del rec["max-length"]
    with pytest.raises(ValueError, match=r"lacks key .max-length.*same\s+version"):
        SiteTask.from_record(ConfigRecord(rec))


def test_unknown_keys_are_kept_aside_not_fatal():
    rec = task().to_record()
    rec["future-feature"] = 1
    t = SiteTask.from_record(rec)
    assert t.extra == {"future-feature": 1}
    assert t == task()
