"""Config merge and validation: every bad input fails with the key path, the value and a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import ConfigError, PretrainJob, load_config, preset_names


def load(*overrides: str, source: str | None = None) -> PretrainJob:
    return load_config(PretrainJob, source, list(overrides), default_preset="pretrain-tiny")


def test_default_preset_and_overrides_merge():
    job = load("train.max_steps=7", "model.n_layer=3", "data.paths=[a.txt,b.txt]")
    assert job.train.max_steps == 7
    assert job.model.n_layer == 3
    assert job.data.paths == ["a.txt", "b.txt"]
    assert job.scaling.num_workers == 2  # from the preset
    assert job.grad_accum_steps == 1  # 16 / (8 x 2)


def test_yaml_file_then_overrides(tmp_path: Path):
    f = tmp_path / "job.yaml"
    f.write_text("train:\n  max_steps: 11\n  micro_batch_size: 4\nscaling:\n  num_workers: 1\n")
    job = load("train.max_steps=12", source=str(f))
    assert job.train.max_steps == 12  # override wins over the file
    assert job.grad_accum_steps == 16 // 4  # file's micro batch, schema's global batch


def test_every_preset_validates():
    assert {"pretrain-tiny", "pretrain-gpt2-124m", "pretrain-llama-1b"} <= set(preset_names())
    for name in ("pretrain-tiny", "pretrain-gpt2-124m", "pretrain-llama-1b"):
        job = load_config(PretrainJob, name)
        assert (
            job.train.global_batch_size % (job.train.micro_batch_size * job.scaling.num_workers)
            == 0
        )


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("trian.max_steps=3", "trian", "unknown config key"),
        ("train.max_stepz=3", "train.max_stepz", "unknown config key"),
        ("train.lr=fast", "train.lr", "could not be converted"),
        ("train.max_steps=0", "train.max_steps", "an integer >= 1"),
        (
            "train.global_batch_size=20",
            "train.global_batch_size",
            "multiple of train.micro_batch_size",
        ),
        ("train.grad_accum_steps=3", "train.global_batch_size", "x train.grad_accum_steps"),
        ("model.n_head=3", "model.d_model", "multiple of model.n_head=3"),
        ("model.family=t5", "model.family", "'gpt2', 'llama' or 'bert'"),
        ("data.val_fraction=0.9", "data.val_fraction", "(0, 0.5)"),
        ("data.tokenizer.vocab_size=100", "data.tokenizer.vocab_size", "[257"),
        ("backend=horovod", "backend", "'ddp' or 'deepspeed'"),
        ("train.precision=bf16", "train.precision", "scaling.use_gpu=true"),
        ("fault.fail_at_step=3", None, None),  # valid: rank 1 exists with 2 workers
        ("scaling.num_workers=0", "scaling.num_workers", ">= 1"),
        ("run.name=a/b", "run.name", "without '/'"),
    ],
)
def test_bad_values_name_key_value_and_fix(override: str, key: str | None, fragment: str | None):
    if key is None:
        load(override)
        return
    with pytest.raises(ConfigError) as ei:
        load(override)
    assert ei.value.key == key
    assert fragment in str(ei.value)


def test_batch_error_suggests_a_valid_value():
    with pytest.raises(ConfigError, match=r"Set train.global_batch_size=16"):
        load("train.global_batch_size=20")


def test_fault_rank_must_exist():
    with pytest.raises(ConfigError) as ei:
        load("fault.fail_at_step=2", "fault.rank=5")
    assert ei.value.key == "fault.rank"


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load("=3")
    with pytest.raises(ConfigError, match="no such file and no such preset"):
        load(source="/nonexistent/job.yaml")


def test_bad_yaml(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(source=str(f))
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load(source=str(f))


def test_cli_exit_code_2_and_message(capsys: pytest.CaptureFixture[str]):
    assert main(["pretrain", "train.global_batch_size=20"]) == 2
    err = capsys.readouterr().err
    assert "train.global_batch_size=20" in err and "multiple of" in err


def test_cli_missing_data_path_exits_2_before_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code = main(["pretrain", f"data.paths=[{tmp_path}/missing.txt]", f"run.root={tmp_path}"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was launched or written


def test_cli_print_config_roundtrips(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["pretrain", "--print-config", "train.max_steps=42"]) == 0
    printed = capsys.readouterr().out
    f = tmp_path / "printed.yaml"
    f.write_text(printed)
    assert load(source=str(f)).train.max_steps == 42


def test_cli_dry_run_renders_launch_plan(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
):
    assert (
        main(["pretrain", "--dry-run", f"data.cache_dir={cache_dir}", "scaling.num_workers=1"]) == 0
    )
    out = capsys.readouterr().out
    assert '"torch_backend": "gloo"' in out
    assert '"grad_accum_steps": 2' in out
    assert '"train_blocks"' in out


def test_console_script_installed():
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "presets"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "pretrain-tiny" in r.stdout
