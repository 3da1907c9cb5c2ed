"""Resume safety: a changed job is refused naming the keys; a round row lost between the
checkpoint and the metrics write is restored from the checkpoint."""

from __future__ import annotations

import json

import pytest
import yaml

from clients.client_app import app as client_app
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, to_yaml
from orchestrator.federated.local_grid import LocalGrid
from orchestrator.federated.report import RoundTable
from orchestrator.federated.resume import changed_keys, check_resumable
from orchestrator.federated.rounds import FederatedRun
from orchestrator.federated.setup import prepare
from tests.unit.test_federated_rounds import job


def test_changed_keys_ignores_what_may_change():
    old = "federation:\n  num_rounds: 3\n  seed: 0\nrun:\n  dir: /a\ntrain:\n  lr: 0.001\n"
    new = "federation:\n  num_rounds: 5\n  seed: 1\nrun:\n  dir: /b\ntrain:\n  lr: 0.002\n"
    assert changed_keys(old, new) == ["federation.seed", "train.lr"]


def test_check_resumable_names_old_and_new_values(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy\.name: 'fedavg' -> 'fedadam'") as e:
        check_resumable("strategy:\n  name: fedavg\n", "strategy:\n  name: fedadam\n", tmp_path)
    assert e.value.key == "strategy.name"
    check_resumable("", "strategy:\n  name: fedadam\n", tmp_path)  # pre-ledger checkpoints


def test_a_checkpoint_from_before_a_setting_existed_resumes_while_it_stays_default(tmp_path):
    """An older fedray wrote no ``privacy`` section: resuming with the defaults is the same job,
    turning the new setting on is not."""
    new = to_yaml(FederatedJob())
    saved = yaml.safe_dump({k: v for k, v in yaml.safe_load(new).items() if k != "privacy"})
    assert changed_keys(saved, new) == []
    check_resumable(saved, new, tmp_path)
    on = new.replace("mode: 'off'", "mode: central")
    assert "privacy.mode" in changed_keys(saved, on)


def grid(n: int = 2) -> LocalGrid:
    return LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])


class CrashAfterCheckpoint(FederatedRun):
    """Dies between round 1's checkpoint and its metrics row (a power cut)."""

    def emit(self, rec):
        if rec.round == 1:
            raise SystemExit("killed")
        super().emit(rec)


def test_a_row_lost_to_a_crash_is_restored_and_a_changed_job_is_refused(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    j = job(cache_dir, "federation.num_sites=2", "federation.num_rounds=2")
    setup = prepare(j)
    with pytest.raises(SystemExit):
        CrashAfterCheckpoint(grid(), j, run_dir, setup, RoundTable(j.task.kind)).run()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0]
    assert (run_dir / "checkpoints" / "round-0001").is_dir()

    changed = job(cache_dir, "federation.num_sites=2", "federation.num_rounds=2", "train.lr=0.01")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        FederatedRun(grid(), changed, run_dir, setup, RoundTable(j.task.kind)).run()

    g = grid()
    FederatedRun(g, j, run_dir, setup, RoundTable(j.task.kind)).run()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["train"]["sites-accepted"] == 2
    assert g.messages_handled == 2 + 2  # only round 2 ran: one train + one evaluate per site
    assert to_yaml(j) == (run_dir / "config.yaml").read_text()
