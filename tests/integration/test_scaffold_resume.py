"""SCAFFOLD resume is exact for server and site state (in-process LocalGrid, no Ray).

No real process here, but five rounds of local training and evaluation take 5-15 s on 2 cores,
too slow for the unit tier's budget."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.client_app import app as client_app
from orchestrator.federated import checkpoint
from orchestrator.federated.local_grid import LocalGrid
from orchestrator.federated.report import RoundTable
from orchestrator.federated.rounds import FederatedRun
from orchestrator.federated.setup import prepare
from tests.unit.test_federated_rounds import job

pytestmark = pytest.mark.integration


class CrashBeforeCheckpoint(FederatedRun):
    """Dies after the sites trained round 2 (and saved their round-2 state), before the server
    checkpointed it: the resumed server re-runs round 2."""

    def save(self, server_round, arrays, rec):
        if server_round == 2:
            raise SystemExit("killed")
        super().save(server_round, arrays, rec)


def test_scaffold_resume_is_exact_for_server_and_site_state(cache_dir, tmp_path):
    """A whole simulation restarts (fresh grid: the sites' contexts are empty, their state comes
    back from the run directory's mirror) in the middle of round 2; the resumed run ends with
    the same model, server c and site c_i, bit for bit, as an uninterrupted one."""
    j = job(
        cache_dir, "federation.num_sites=2", "federation.num_rounds=2", "strategy.name=scaffold"
    )
    setup = prepare(j)

    def sites() -> LocalGrid:
        return LocalGrid(client_app, [{"partition-id": i, "num-partitions": 2} for i in range(2)])

    def final(run_dir):
        ckpt = checkpoint.latest(run_dir)
        site_c = {
            p.relative_to(run_dir / "site-state").parts[0]: load_file(str(p))
            for p in sorted((run_dir / "site-state").glob("site-*/*/scaffold-c/round-0002.*"))
        }
        return ckpt.global_arrays, ckpt.strategy_arrays, site_c

    # A run leaves its final weights in setup.model (for the export): each run gets a fresh one.
    FederatedRun(sites(), j, tmp_path / "a", setup, RoundTable(j.task.kind)).run()
    with pytest.raises(SystemExit):
        CrashBeforeCheckpoint(sites(), j, tmp_path / "b", prepare(j), RoundTable(j.task.kind)).run()
    FederatedRun(sites(), j, tmp_path / "b", prepare(j), RoundTable(j.task.kind)).run()
    (wa, sa, ca), (wb, sb, cb) = final(tmp_path / "a"), final(tmp_path / "b")
    assert set(sa) == {f"c.{k}" for k in setup.update_keys}
    assert any(np.abs(v).max() > 0 for v in sa.values())  # c moved away from zero
    assert sorted(ca) == sorted(cb) == ["site-0", "site-1"]
    for x, y in [(wa, wb), (sa, sb), *((ca[s], cb[s]) for s in ca)]:
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
