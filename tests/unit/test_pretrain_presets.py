"""The bundled pretraining presets: what they launch, and that the README describes them so.
No Ray, no data preparation (``launch_plan`` without data)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from orchestrator.config import PretrainJob, load_config
from orchestrator.pretrain.runner import launch_plan

README = Path(__file__).resolve().parents[2] / "README.md"

# name -> (backend, ZeRO stage if deepspeed, workers, GPU workers)
PRESETS = {
    "pretrain-tiny": ("ddp", None, 2, False),
    "pretrain-bert-tiny": ("ddp", None, 2, False),
    "pretrain-gpt2-124m": ("ddp", None, 8, True),
    "pretrain-llama-1b": ("deepspeed", 3, 16, True),
}


def raw_preset(name: str) -> dict:
    text = resources.files("orchestrator.config").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_launches_what_it_says(name: str):
    backend, stage, workers, gpu = PRESETS[name]
    job = load_config(PretrainJob, name)
    plan = launch_plan(job)
    assert plan["backend"] == backend
    assert plan["ray"]["scaling_config"]["num_workers"] == workers
    assert plan["ray"]["torch_backend"] == ("nccl" if gpu else "gloo")
    if backend == "deepspeed":
        ds = plan["deepspeed_config"]
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["bf16"]["enabled"] is gpu  # train.precision=auto: bf16 on GPU workers
        assert ds["train_batch_size"] == job.train.global_batch_size
    else:
        assert "deepspeed_config" not in plan


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_sets_deepspeed_options_only_for_the_deepspeed_backend(name: str):
    """A ``deepspeed:`` section under ``backend: ddp`` would be silently unused."""
    raw = raw_preset(name)
    if "deepspeed" in raw:
        assert raw.get("backend") == "deepspeed", f"{name} sets deepspeed.* but not the backend"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_readme_describes_each_preset_as_it_is(name: str):
    backend, stage, workers, gpu = PRESETS[name]
    text = " ".join(README.read_text().split())  # line breaks as spaces
    found = re.search(rf"`{re.escape(name)}` \(([^)]*)\)", text)
    assert found, f"README's preset list does not describe {name}"
    desc = found.group(1)
    assert ("DDP" if backend == "ddp" else f"DeepSpeed ZeRO-{stage}") in desc, desc
    assert (f"{workers} GPUs" if gpu else f"{workers} CPU workers") in desc, desc
    other = "DeepSpeed" if backend == "ddp" else "DDP"
    assert other not in desc, desc
