"""DeepSpeed JSON generation and validation, and consolidating a ZeRO checkpoint's weights: no
Ray, no processes, no DeepSpeed engine. Per-rank checkpoint manifests are in
test_pretrain_checkpoint.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import PretrainJob, load_config
from orchestrator.config.loader import ConfigError
from orchestrator.pretrain.backends.deepspeed import deepspeed_config, load_model_state
from orchestrator.pretrain.checkpoint import write_rank_manifest
from orchestrator.pretrain.runner import launch_plan


def job(*overrides: str) -> PretrainJob:
    return load_config(
        PretrainJob, None, ["backend=deepspeed", *overrides], default_preset="pretrain-tiny"
    )


def user_json(tmp_path: Path, data: object, name: str = "ds.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


# ------------------------------------------------------------------------------------------
# Generated JSON


def test_zero3_defaults_on_cpu():
    cfg = deepspeed_config(
        job("deepspeed.zero_stage=3", "train.global_batch_size=32", "train.micro_batch_size=4")
    )
    assert cfg == {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 4,  # 32 / (4 x 2 workers)
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    assert "optimizer" not in cfg and "scheduler" not in cfg  # torch AdamW + LambdaLR, no JIT


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"),
    [("auto", True, False), ("bf16", True, False), ("fp16", False, True), ("fp32", False, False)],
)
def test_precision_on_gpu(precision: str, bf16: bool, fp16: bool):
    cfg = deepspeed_config(job("scaling.use_gpu=true", f"train.precision={precision}"))
    assert cfg["bf16"] == {"enabled": bf16} and cfg["fp16"] == {"enabled": fp16}


def test_offload_and_deepspeed_optimizer():
    cfg = deepspeed_config(
        job(
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
            "scaling.num_workers=4",
            "train.global_batch_size=64",
            "train.micro_batch_size=8",
            "train.grad_clip=0",
        )
    )
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["gradient_clipping"] == 0.0
    assert cfg["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }
    # torch AdamW on offloaded states needs DeepSpeed's "client optimizer" escape hatch.
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    cfg = deepspeed_config(
        job("deepspeed.optimizer=deepspeed", "train.lr=2e-4", "train.weight_decay=0.05")
    )
    assert cfg["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 2e-4, "betas": [0.9, 0.95], "weight_decay": 0.05},
    }
    assert "zero_force_ds_cpu_optimizer" not in cfg


def test_gpu_offload_pins_memory():
    cfg = deepspeed_config(job("scaling.use_gpu=true", "deepspeed.offload_optimizer=true"))
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}


def test_dry_run_plan_contains_the_json():
    j = job("deepspeed.zero_stage=1")
    assert launch_plan(j)["deepspeed_config"] == deepspeed_config(j)


# ------------------------------------------------------------------------------------------
# User JSON: merged when it adds options, refused when it contradicts the typed config


def test_user_json_adds_options_and_may_restate_typed_values(tmp_path: Path):
    path = user_json(
        tmp_path,
        {
            "train_batch_size": "auto",  # HF style: fedray fills it in
            "train_micro_batch_size_per_gpu": 8,  # same as the typed value
            "steps_per_print": 5,  # a default, not typed: the user may change it
            "zero_optimization": {
                "stage": 3,
                "stage3_prefetch_bucket_size": 1000,
                "offload_param": {"device": "none"},  # restates "off"
            },
            "fp16": {"enabled": False},
        },
    )
    cfg = deepspeed_config(job("deepspeed.zero_stage=3", f"deepspeed.config_file={path}"))
    assert cfg["train_batch_size"] == 16
    assert cfg["steps_per_print"] == 5
    assert cfg["zero_optimization"]["stage3_prefetch_bucket_size"] == 1000


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (
            {"train_batch_size": 32},
            ["train_batch_size=32", "gives 16", "train.global_batch_size", "x scaling.num_workers"],
        ),
        ({"gradient_accumulation_steps": 4}, ["gradient_accumulation_steps=4", "gives 1"]),
        (
            {"zero_optimization": {"stage": 1}},
            ["zero_optimization.stage=1", "deepspeed.zero_stage"],
        ),
        (
            {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
            ["offload_optimizer.device", "leaves it unset", "deepspeed.offload_optimizer"],
        ),
        ({"bf16": {"enabled": True}}, ["bf16.enabled=true", "train.precision"]),
        ({"optimizer": {"type": "Adam"}}, ["optimizer=", "deepspeed.optimizer"]),
        ({"scheduler": {"type": "WarmupLR"}}, ["scheduler=", "warmup_steps"]),
        ({"gradient_clipping": 0.5}, ["gradient_clipping=0.5", "train.grad_clip"]),
        (  # DeepSpeed's block does nothing for Hugging Face models: refused, with the switch
            {"activation_checkpointing": {"partition_activations": True}},
            ["would do nothing", "train.activation_checkpointing=true"],
        ),
    ],
)
def test_user_json_conflicts_are_errors(tmp_path: Path, data: dict, needles: list[str]):
    path = user_json(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        deepspeed_config(job(f"deepspeed.config_file={path}"))
    assert e.value.key == "deepspeed.config_file"
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_all_conflicts_reported_at_once(tmp_path: Path):
    path = user_json(tmp_path, {"train_batch_size": 32, "zero_optimization": {"stage": 0}})
    with pytest.raises(ConfigError, match=r"train_batch_size=32.*zero_optimization\.stage=0"):
        deepspeed_config(job(f"deepspeed.config_file={path}"))


def test_deepspeed_optimizer_params_must_match_train(tmp_path: Path):
    path = user_json(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": 0.1, "eps": 1e-6}}})
    with pytest.raises(ConfigError, match=r"optimizer\.params\.lr=0\.1.*train\.lr"):
        deepspeed_config(job("deepspeed.optimizer=deepspeed", f"deepspeed.config_file={path}"))
    ok = user_json(tmp_path, {"optimizer": {"params": {"eps": 1e-6}}}, "ok.json")
    cfg = deepspeed_config(job("deepspeed.optimizer=deepspeed", f"deepspeed.config_file={ok}"))
    assert cfg["optimizer"]["params"]["eps"] == 1e-6 and cfg["optimizer"]["type"] == "AdamW"


def test_fp16_and_bf16_together(tmp_path: Path):
    path = user_json(tmp_path, {"fp16": {"enabled": True}, "bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match="both bf16 and fp16"):
        deepspeed_config(job("scaling.use_gpu=true", f"deepspeed.config_file={path}"))


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "no such file"), ("{oops", "not valid JSON"), ("[1, 2]", "JSON object, got list")],
)
def test_unreadable_user_json(tmp_path: Path, content: str | None, needle: str):
    p = tmp_path / "ds.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        deepspeed_config(job(f"deepspeed.config_file={p}"))


def test_unfilled_auto_is_an_error(tmp_path: Path):
    path = user_json(tmp_path, {"zero_optimization": {"reduce_bucket_size": "auto"}})
    with pytest.raises(ConfigError, match=r"zero_optimization\.reduce_bucket_size"):
        deepspeed_config(job(f"deepspeed.config_file={path}"))


# ------------------------------------------------------------------------------------------
# Typed cross-field checks (exit code 2 through the CLI)


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        (
            ["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"],
            "deepspeed.offload_optimizer",
            "zero_stage=1, 2 or 3",
        ),
        (
            ["deepspeed.zero_stage=2", "deepspeed.offload_params=true"],
            "deepspeed.offload_params",
            "zero_stage=3",
        ),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage", "0, 1, 2 or 3"),
        (["train.precision=bf16"], "train.precision", "scaling.use_gpu=true"),
        (["train.global_batch_size=12"], "train.global_batch_size", "micro_batch_size"),
    ],
)
def test_typed_validation(overrides: list[str], key: str, needle: str):
    with pytest.raises(ConfigError) as e:
        job(*overrides)
    assert e.value.key == key and needle in str(e.value), str(e.value)


def test_cli_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from orchestrator.cli import main

    rc = main(["pretrain", "backend=deepspeed", "deepspeed.offload_params=true", "--dry-run"])
    assert rc == 2 and "deepspeed.offload_params" in capsys.readouterr().err
    path = user_json(tmp_path, {"train_batch_size": 7})
    rc = main(["pretrain", "backend=deepspeed", f"deepspeed.config_file={path}", "--dry-run"])
    assert rc == 2 and "train_batch_size=7" in capsys.readouterr().err


def test_load_model_state_zero0(tmp_path: Path):
    """ZeRO-0 keeps the whole module in rank 0's model-states file; exported as fp32."""
    import torch

    d = tmp_path / "ckpt"
    (d / "global_step2").mkdir(parents=True)
    torch.save(
        {"module": {"w": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor([3])}},
        d / "global_step2" / "mp_rank_00_model_states.pt",
    )
    write_rank_manifest(d, 2, 1, 0, "deepspeed", tag="global_step2", zero_stage=0)
    state = load_model_state(d)
    assert state["w"].dtype == torch.float32 and state["n"].dtype == torch.int64
