"""Persistent site state (clients/site_state.py): versions by round, run identity, atomic disk
files that survive a site restart, and corrupt state that resets with a logged reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clients.site_state import DiskBackend, SiteStateStore, site_store


def ctx(run_id: int = 7) -> Context:
    return Context(run_id=run_id, node_id=1, node_config={}, state=RecordDict(), run_config={})


LIKE = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def arrays(x: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, x) for k, v in LIKE.items()}


def test_context_store_keeps_state_across_rounds_and_versions_by_round():
    c = ctx()
    sim = {"partition-id": 0, "num-partitions": 2}
    assert site_store(c, "runA", 1, sim).load("cv", like=LIKE) is None
    site_store(c, "runA", 1, sim).save("cv", arrays(1.0))
    site_store(c, "runA", 2, sim).save("cv", arrays(2.0))
    got = site_store(c, "runA", 3, sim).load("cv", like=LIKE)
    assert got is not None and np.all(got["w"] == 2.0) and got["w"].dtype == np.float32
    # A re-run of round 2 (the server resumed before checkpointing it) sees the pre-round-2 state.
    again = site_store(c, "runA", 2, sim).load("cv", like=LIKE)
    assert again is not None and np.all(again["b"] == 1.0)
    # Another run (a fresh federation in the same place) never sees it.
    assert site_store(c, "runB", 3, sim).load("cv", like=LIKE) is None


def test_disk_state_survives_a_site_restart_and_prunes_old_versions(tmp_path):
    node = {"data-path": "x.csv", "state-dir": str(tmp_path)}
    for r in (1, 2, 3):
        site_store(ctx(), "runA", r, node).save("cv", arrays(float(r)))
    files = sorted(p.name for p in (tmp_path / "runA" / "cv").iterdir())
    assert files == ["round-0002.safetensors", "round-0003.safetensors"]  # no temp files left
    restarted = site_store(ctx(run_id=99), "runA", 4, node)  # new process, new context
    got = restarted.load("cv", like=LIKE)
    assert got is not None and np.all(got["w"] == 3.0)
    # A server resumed from round 1's checkpoint re-runs round 2: round 3's version is stale.
    site_store(ctx(), "runA", 2, node).save("cv", arrays(20.0))
    assert DiskBackend(tmp_path, "runA").versions("cv") == [2]


def test_simulated_site_mirrors_to_the_run_dir_for_a_resumed_simulation(tmp_path):
    sim = {"partition-id": 1, "num-partitions": 2}
    site_store(ctx(), "runA", 1, sim, str(tmp_path)).save("cv", arrays(5.0))
    assert (tmp_path / "site-1" / "runA" / "cv" / "round-0001.safetensors").is_file()
    resumed = site_store(ctx(), "runA", 2, sim, str(tmp_path))  # empty context
    got = resumed.load("cv", like=LIKE)
    assert got is not None and np.all(got["w"] == 5.0)


@pytest.mark.parametrize(
    "corrupt",
    ["truncate", "garbage", "nan", "shape", "other-run"],
)
def test_corrupt_state_resets_with_a_logged_reason(tmp_path, caplog, corrupt):
    node = {"data-path": "x.csv", "state-dir": str(tmp_path)}
    bad = arrays(1.0)
    if corrupt == "nan":
        bad["w"][0, 0] = np.nan
        DiskBackend(tmp_path, "runA").write("cv", 1, bad)  # bypass save()'s own check
    elif corrupt == "shape":
        site_store(ctx(), "runA", 1, node).save("cv", {**bad, "w": np.zeros((3, 2), np.float32)})
    else:
        site_store(ctx(), "runA", 1, node).save("cv", bad)
    path = tmp_path / "runA" / "cv" / "round-0001.safetensors"
    if corrupt == "truncate":
        path.write_bytes(path.read_bytes()[:-5])
    elif corrupt == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif corrupt == "other-run":  # a file copied in from another run's directory
        DiskBackend(tmp_path, "runX").write("cv", 1, bad)
        (tmp_path / "runX" / "cv" / path.name).replace(path)
    store = site_store(ctx(), "runA", 2, node)
    with caplog.at_level(logging.WARNING, logger="clients.site_state"):
        assert store.load("cv", like=LIKE) is None
    assert "cv" in store.resets and "unusable" in caplog.text


def test_save_refuses_non_finite_state_and_bad_names(tmp_path):
    store = SiteStateStore([DiskBackend(tmp_path, "runA")], 1)
    with pytest.raises(ValueError, match="NaN"):
        store.save("cv", {"w": np.array([np.inf], np.float32)})
    with pytest.raises(ValueError, match="name"):
        store.save("../escape", arrays(1.0))


def test_fedray_site_passes_its_state_dir_to_the_client_app(tmp_path):
    from orchestrator.processes.site import SiteOptions

    opts = SiteOptions(server="127.0.0.1:9092", data=tmp_path / "a.csv")
    assert "state-dir" not in opts.node_config()
    opts = SiteOptions(server="127.0.0.1:9092", data=tmp_path / "a.csv", state_dir=tmp_path / "s")
    assert opts.node_config()["state-dir"] == str(tmp_path / "s")
