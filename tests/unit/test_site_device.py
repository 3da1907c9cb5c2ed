"""Sites train on the device they are given: their GPU when they have one (model, batches, LoRA,
bf16 autocast), the CPU otherwise with the fp32 path unchanged."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from clients.train import Encoded, autocast, evaluate, local_train, site_device
from orchestrator.config.federated import PartitionConfig, SiteTrainConfig
from orchestrator.contract.model import ModelSpec, build, trainable_names
from orchestrator.contract.task import SiteTask

GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 64,
        "n_positions": 16, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}  # fmt: skip


def task(finetune: str = "full") -> SiteTask:
    spec = ModelSpec(task="classification", hf_config={**GPT2, "num_labels": 2}, finetune=finetune)
    return SiteTask(
        spec=spec, tokenizer_json="{}", text_field="text", label_field="label", max_length=16,
        train=SiteTrainConfig(micro_batch_size=4, lr=1e-2), local_epochs=1,
        partition=PartitionConfig(), labels=("neg", "pos"), local_steps=6,
    )  # fmt: skip


def data(n: int = 8) -> Encoded:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (n, 16), generator=g)
    return Encoded(ids, torch.ones_like(ids), torch.arange(n) % 2)


def test_cpu_by_default_without_cuda_and_explicit_devices():
    if not torch.cuda.is_available():
        assert site_device() == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            site_device("cuda")
    assert site_device("cpu") == torch.device("cpu")
    # The CPU path is untouched: no autocast (training and updates stay fp32, as before).
    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)


def train_on(device: torch.device, finetune: str, steps: int) -> dict[str, float]:
    """Build, evaluate, train and take the update as the ClientApp does; returns train metrics."""
    t = dataclasses.replace(task(finetune), local_steps=steps)
    model = build(t.spec).to(device)
    keys = set(trainable_names(model))
    before = {k: p.detach().clone() for k, p in model.named_parameters() if k in keys}
    evaluate(model, data(), "classification", 4, 2)
    metrics = local_train(model, data(), t)  # batches move to the model's device inside
    assert all(p.device.type == device.type for p in model.parameters())
    update = {k: (p.detach() - before[k]).cpu().numpy() for k, p in model.named_parameters()
              if k in keys}  # fmt: skip
    assert update and all(abs(u).sum() > 0 for u in update.values())
    return metrics


def test_the_same_steps_on_cpu():
    """The GPU test's code path, on the CPU (2 LoRA steps): keeps it runnable without a GPU."""
    assert train_on(torch.device("cpu"), "lora", steps=2)["train-steps"] == 2.0


@pytest.mark.gpu
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_site_trains_and_evaluates_on_its_gpu(finetune: str):
    device = site_device()
    assert device.type == "cuda"
    metrics = train_on(device, finetune, steps=20)
    assert metrics["train-loss-last"] < metrics["train-loss"]
    with autocast(device):
        out = build(task(finetune).spec).to(device)(input_ids=data().input_ids.to(device)).logits
    if torch.cuda.is_bf16_supported():
        assert out.dtype == torch.bfloat16


def test_building_a_lora_model_prints_no_upstream_deprecation_warning():
    """peft's internal use of transformers' deprecated alias must not reach every site's console."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build(task("lora").spec)
    assert trainable_names(model)  # a real LoRA model was built
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [
        str(w.message) for w in caught
    ]
