"""DeepSpeed JSON generation and validation, and per-rank checkpoint manifests: no Ray, no
processes, no DeepSpeed engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import PretrainJob, load_config
from orchestrator.config.loader import ConfigError
from orchestrator.pretrain.backends.deepspeed import deepspeed_config, load_model_state
from orchestrator.pretrain.checkpoint import (
    latest_complete,
    verify,
    write_manifest,
    write_rank_manifest,
)
from orchestrator.pretrain.runner import check_resumable, launch_plan


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
            "activation_checkpointing": {"partition_activations": True},
        },
    )
    cfg = deepspeed_config(job("deepspeed.zero_stage=3", f"deepspeed.config_file={path}"))
    assert cfg["train_batch_size"] == 16
    assert cfg["steps_per_print"] == 5
    assert cfg["zero_optimization"]["stage3_prefetch_bucket_size"] == 1000
    assert cfg["activation_checkpointing"] == {"partition_activations": True}


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


# ------------------------------------------------------------------------------------------
# Per-rank manifests on real files


def _rank_ckpt(root: Path, step: int, world: int = 2, sizes: tuple[int, ...] = (100, 60)) -> Path:
    """What Ray leaves after merging each rank's directory: shards + one manifest per rank."""
    d = root / f"checkpoint_{step:08d}"
    for r in range(world):
        own = root / f"rank{r}-{step}"  # the rank's temp dir before Ray copies it
        (own / "global_step").mkdir(parents=True)
        (own / "global_step" / f"zero_pp_rank_{r}_optim_states.pt").write_bytes(b"x" * sizes[r])
        (own / f"extra.rank{r}.pt").write_bytes(b"e" * 10)
        if r == 0:
            (own / "latest").write_text("global_step")
        write_rank_manifest(own, step, world, r, "deepspeed", tag="global_step", zero_stage=3)
        for p in own.rglob("*"):
            if p.is_file():
                (d / p.relative_to(own)).parent.mkdir(parents=True, exist_ok=True)
                p.rename(d / p.relative_to(own))
    return d


def test_rank_manifests_list_only_own_files(tmp_path: Path):
    d = _rank_ckpt(tmp_path, 4)
    m1 = json.loads((d / "manifest.rank1.json").read_text())
    assert m1["files"] == {"extra.rank1.pt": 10, "global_step/zero_pp_rank_1_optim_states.pt": 60}
    assert (m1["rank"], m1["world_size"], m1["step"], m1["tag"]) == (1, 2, 4, "global_step")
    info = verify(d)
    assert (info.step, info.world_size, info.backend) == (4, 2, "deepspeed")
    assert len(info.manifest["files"]) == 5 and info.manifest["zero_stage"] == 3


def test_missing_shard_is_refused_and_previous_used(tmp_path: Path):
    _rank_ckpt(tmp_path, 2)
    d = _rank_ckpt(tmp_path, 4)
    (d / "global_step" / "zero_pp_rank_1_optim_states.pt").unlink()
    with pytest.raises(ValueError, match=r"missing global_step/zero_pp_rank_1_optim_states\.pt"):
        verify(d)
    assert latest_complete(tmp_path).step == 2


def test_wrong_size_shard_is_refused(tmp_path: Path):
    d = _rank_ckpt(tmp_path, 4)
    (d / "global_step" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"x" * 99)
    with pytest.raises(ValueError, match="has 99 bytes, manifest says 100"):
        verify(d)


def test_missing_rank_manifest_is_refused(tmp_path: Path):
    """Rank 1's upload never finished: its shards may be there, its manifest is not."""
    _rank_ckpt(tmp_path, 2)
    d = _rank_ckpt(tmp_path, 4)
    (d / "manifest.rank1.json").unlink()
    with pytest.raises(ValueError, match=r"no manifest from rank\(s\) \[1\]"):
        verify(d)
    (d / "manifest.rank0.json").unlink()
    with pytest.raises(ValueError, match="never completed"):
        verify(d)
    assert latest_complete(tmp_path).step == 2


def test_mixed_world_sizes_or_steps_are_refused(tmp_path: Path):
    a = _rank_ckpt(tmp_path / "a", 4)
    b = _rank_ckpt(tmp_path / "b", 6)
    (a / "manifest.rank1.json").write_text((b / "manifest.rank1.json").read_text())
    with pytest.raises(ValueError, match="mixed checkpoints"):
        verify(a)
    c = _rank_ckpt(tmp_path / "c", 4, world=1, sizes=(100,))
    (c / "manifest.rank3.json").write_text((c / "manifest.rank0.json").read_text())
    with pytest.raises(ValueError, match=r"unexpected manifests from rank\(s\) \[3\]"):
        verify(c)


def test_single_manifest_checkpoints_unchanged(tmp_path: Path):
    """DDP's one manifest.json per checkpoint keeps working alongside."""
    d = tmp_path / "checkpoint_00000003"
    d.mkdir()
    (d / "state.pt").write_bytes(b"s" * 7)
    write_manifest(d, 3, world_size=4, backend="ddp")
    info = verify(d)
    assert (info.step, info.world_size, info.manifest["files"]) == (3, 4, {"state.pt": 7})


def test_resume_checks_world_size_and_backend(tmp_path: Path):
    info = verify(_rank_ckpt(tmp_path, 4))
    check_resumable(job(), info)  # 2 workers wrote it, 2 resume it
    with pytest.raises(ConfigError, match=r"scaling.num_workers=2") as e:
        check_resumable(job("scaling.num_workers=4", "train.global_batch_size=32"), info)
    assert e.value.key == "scaling.num_workers" and "holds ZeRO shards of 2 workers" in str(e.value)
    with pytest.raises(ConfigError, match="written by backend='deepspeed'"):
        check_resumable(job("backend=ddp"), info)


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
