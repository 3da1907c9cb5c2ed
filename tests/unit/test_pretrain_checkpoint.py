"""Pretraining checkpoints (orchestrator.pretrain.checkpoint): DDP's single manifest, DeepSpeed's
per-rank manifests, verification, fallback to the newest complete checkpoint, and the resume
checks on world size and backend. Real files in a temp dir; no Ray, no processes, no engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import PretrainJob, load_config
from orchestrator.config.loader import ConfigError
from orchestrator.pretrain.checkpoint import (
    latest_complete,
    list_checkpoints,
    verify,
    write_manifest,
    write_rank_manifest,
)
from orchestrator.pretrain.runner import check_resumable


def job(*overrides: str) -> PretrainJob:
    """The default preset on the DeepSpeed backend (2 workers)."""
    return load_config(
        PretrainJob, None, ["backend=deepspeed", *overrides], default_preset="pretrain-tiny"
    )


# ------------------------------------------------------------------------------------------
# One manifest per checkpoint (DDP: rank 0 holds the whole state)


def _ckpt(root: Path, step: int, payload: bytes = b"x" * 100) -> Path:
    d = root / f"checkpoint_{step:08d}"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(payload)
    write_manifest(d, step, world_size=2, backend="ddp")
    return d


def test_manifest_verification_and_fallback(tmp_path: Path):
    _ckpt(tmp_path, 10)
    newest = _ckpt(tmp_path, 20)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint_00000020",
        "checkpoint_00000010",
    ]
    assert verify(newest).step == 20
    # truncated file -> refused, previous complete checkpoint used
    (newest / "state.pt").write_bytes(b"x" * 50)
    with pytest.raises(ValueError, match="has 50 bytes, manifest says 100"):
        verify(newest)
    assert latest_complete(tmp_path).step == 10
    # missing file and missing manifest
    (newest / "state.pt").unlink()
    with pytest.raises(ValueError, match=r"missing state\.pt"):
        verify(newest)
    (newest / "manifest.json").unlink()
    with pytest.raises(ValueError, match="never completed"):
        verify(newest)
    (tmp_path / "checkpoint_00000010" / "manifest.json").write_text("{not json")
    assert latest_complete(tmp_path) is None


def test_manifest_records_sizes(tmp_path: Path):
    d = _ckpt(tmp_path, 5)
    m = json.loads((d / "manifest.json").read_text())
    assert m["files"] == {"state.pt": 100} and m["world_size"] == 2 and m["backend"] == "ddp"


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


# ------------------------------------------------------------------------------------------
# Loading never runs code from a checkpoint file


class _RunsCode:
    """Unpickling this calls Path.touch(marker): stands in for any code an attacker chooses."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    import pickle

    import torch

    from orchestrator.pretrain.backends.ddp import load_model_state
    from orchestrator.pretrain.checkpoint import check_safe
    from orchestrator.pretrain.safe_load import UnsafeCheckpointError

    marker = tmp_path / "code-ran"
    d = tmp_path / "checkpoint_00000004"
    d.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _RunsCode(marker)}, d / "state.pt")
    write_manifest(d, 4, world_size=1, backend="ddp")
    info = verify(d)  # structurally complete...
    with pytest.raises(UnsafeCheckpointError, match=r"state\.pt.*could run code") as e:
        check_safe(info)  # ...but refused before anything is launched
    assert e.value.key == "run.dir" and "Delete that checkpoint directory" in str(e.value)
    with pytest.raises(UnsafeCheckpointError):
        load_model_state(d)
    # a raw pickle (not torch's zip format) is refused too
    (d / "state.pt").write_bytes(pickle.dumps(_RunsCode(marker)))
    write_manifest(d, 4, world_size=1, backend="ddp")
    with pytest.raises(UnsafeCheckpointError):
        check_safe(verify(d))
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path):
    import random

    import numpy as np
    import torch

    from orchestrator.pretrain.loop import rng_state, set_rng_state
    from orchestrator.pretrain.safe_load import safe_load

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # numpy caches a gaussian: part of the state
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    expect = (random.random(), np.random.standard_normal(), torch.rand(2).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(safe_load(tmp_path / "s.pt")["rng"])
    assert (random.random(), np.random.standard_normal(), torch.rand(2).tolist()) == expect


def test_safe_checkpoint_engine_loads_with_the_map_locations_deepspeed_passes(tmp_path: Path):
    import torch

    from orchestrator.pretrain.safe_load import SafeCheckpointEngine

    class Inner:
        name = "TorchCheckpointEngine"

    torch.save({"w": torch.ones(2), "n": 3}, tmp_path / "s.pt")
    engine = SafeCheckpointEngine(Inner())
    assert engine.name == "TorchCheckpointEngine"  # everything else is the wrapped engine's
    for where in (None, "cpu", torch.device("cpu"), lambda storage, loc: storage):
        state = engine.load(str(tmp_path / "s.pt"), map_location=where)
        assert state["n"] == 3 and torch.equal(state["w"], torch.ones(2))


class _GetattrOf:
    """Pickles as ``getattr(obj, name)``: how Python pickles enum members, and how a hostile
    file would walk from an allowed class to arbitrary code."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def test_deepspeed_enum_members_load_but_getattr_reaches_nothing_else(tmp_path: Path):
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from orchestrator.pretrain.safe_load import (
        UnsafeCheckpointError,
        deepspeed_globals,
        safe_load,
    )

    ok = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": _GetattrOf(ZeroStageEnum, "optimizer_states")}, ok)
    state = safe_load(ok, deepspeed_globals())
    assert state["zero_stage"] is ZeroStageEnum.optimizer_states
    for obj, name in [(LossScaler, "__init__"), (ZeroStageEnum, "__class__")]:
        bad = tmp_path / f"bad-{name}.pt"
        torch.save({"x": _GetattrOf(obj, name)}, bad)
        with pytest.raises(UnsafeCheckpointError, match="could run code"):
            safe_load(bad, deepspeed_globals())
