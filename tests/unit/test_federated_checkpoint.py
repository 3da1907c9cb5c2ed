"""Per-round server checkpoints: atomic, last-K kept, half-written ones never loaded."""

from __future__ import annotations

import numpy as np

from orchestrator.federated import checkpoint


def arrays(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), v, np.float32)}


def test_save_load_roundtrip_and_keep_last(tmp_path):
    for r in (1, 2, 3):
        checkpoint.save(tmp_path, r, arrays(r), {"m.w": np.ones(1)}, {"record": {"round": r}})
    assert [p.name for p in checkpoint.rounds(tmp_path)] == ["round-0002", "round-0003"]
    ck = checkpoint.latest(tmp_path)
    assert ck is not None and ck.round == 3
    np.testing.assert_array_equal(ck.global_arrays["w"], arrays(3)["w"])
    np.testing.assert_array_equal(ck.strategy_arrays["m.w"], np.ones(1))
    assert ck.state["record"] == {"round": 3}


def test_half_written_checkpoints_are_never_loaded(tmp_path):
    checkpoint.save(tmp_path, 1, arrays(1), {}, {})
    # A crash mid-write leaves only a temporary directory (written first, renamed last).
    tmp = tmp_path / "checkpoints" / ".tmp-round-0002-x"
    tmp.mkdir()
    (tmp / "global.safetensors").write_bytes(b"partial")
    ck = checkpoint.latest(tmp_path)
    assert ck is not None and ck.round == 1


def test_no_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    assert checkpoint.rounds(tmp_path) == []
