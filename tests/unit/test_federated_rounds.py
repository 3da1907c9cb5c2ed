"""Client and server loop in one process (LocalGrid: the ClientApp runs in-process, no Ray).

Covers: LoRA replies hold only adapters; one site under FedAvg equals centralized training;
a full run writes metrics/checkpoints/an HF export and resumes; malformed replies mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, RecordDict

from clients.client_app import app as client_app
from clients.client_app import train as client_train
from clients.site_data import load_site_data
from clients.train import encode, local_train
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.contract.model import build, load_state, model_state
from orchestrator.contract.task import SiteTask
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.federated.setup import prepare
from strategies import FedAvg

ensure_task_identity()


def job(cache_dir: Path, *overrides: str) -> FederatedJob:
    small = [
        f"data.cache_dir={cache_dir}",
        "data.tokenizer.path=null",  # a BPE of data.tokenizer.vocab_size, not the bundled one
        "federation.eval_every=1",  # every round evaluated (the demo preset: every 5th)
        "model.path=null",  # build the small model below (not the bundled one)
        "model.d_model=32",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.vocab_size=512",
        "task.max_length=24",
        "partition.max_examples_per_site=60",
        "finetune.local_steps=2",
        "train.micro_batch_size=8",
    ]
    return load_config(FederatedJob, None, [*small, *overrides], default_preset="simulate-demo")


def train_message(setup, arrays, server_round: int = 1) -> Message:
    cfg = setup.task.to_record().copy()
    cfg["server-round"] = server_round
    return Message(
        content=RecordDict({"arrays": arrays, "config": cfg}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )


class _Ctx:
    def __init__(self, node_config):
        self.node_config = node_config
        self.run_config = {}


def test_lora_reply_holds_only_adapter_tensors(cache_dir):
    setup = prepare(job(cache_dir, "finetune.mode=lora", "finetune.lora_r=4"))
    state = {k: v.numpy() for k, v in model_state(setup.model).items()}
    ctx = _Ctx({"partition-id": 0, "num-partitions": 4})
    reply = client_train(train_message(setup, from_numpy(state)), ctx)  # type: ignore[arg-type]
    update = to_numpy(reply.content["arrays"])
    assert set(update) == set(setup.update_keys)
    assert all("lora_" in k or "modules_to_save" in k for k in update), sorted(update)
    assert sum("lora_A" in k for k in update) == sum("lora_B" in k for k in update) >= 1
    params = dict(setup.model.named_parameters())
    expected_bytes = sum(params[k].numel() * 4 for k in update)
    sent = sum(len(a.data) for a in reply.content["arrays"].values())
    header = 128 * len(update)  # .npy header per tensor
    assert expected_bytes <= sent <= expected_bytes + header
    full_bytes = sum(v.nbytes for v in state.values())
    assert sent < 0.1 * full_bytes
    # LoRA B starts at zero, so an untrained adapter is a no-op: the update must be non-zero.
    assert any(np.abs(v).sum() > 0 for k, v in update.items() if "lora_B" in k)


def test_a_site_decodes_the_task_once_per_message(cache_dir, monkeypatch):
    setup = prepare(job(cache_dir, "finetune.local_steps=1"))
    state = {k: v.numpy() for k, v in model_state(setup.model).items()}
    decoded = []
    real = SiteTask.from_record.__func__

    def counting(cls, record):
        decoded.append(record)
        return real(cls, record)

    monkeypatch.setattr(SiteTask, "from_record", classmethod(counting))
    ctx = _Ctx({"partition-id": 0, "num-partitions": 4})
    client_train(train_message(setup, from_numpy(state)), ctx)  # type: ignore[arg-type]
    assert len(decoded) == 1


def test_one_site_fedavg_equals_centralized_training(cache_dir):
    steps = 5
    j = job(
        cache_dir,
        "federation.num_sites=1",
        "federation.min_sites=1",
        "partition.kind=iid",
        f"finetune.local_steps={steps}",
    )
    setup = prepare(j)
    w0 = {k: v.numpy().copy() for k, v in model_state(setup.model).items()}
    arrays = from_numpy(w0)

    # Federated: the site trains E steps and replies with its update; FedAvg applies it.
    strategy = FedAvg(update_keys=setup.update_keys)
    strategy._global = to_numpy(arrays)
    msg = train_message(setup, arrays)
    ctx = _Ctx({"partition-id": 0, "num-partitions": 1})
    reply = client_train(msg, ctx)  # type: ignore[arg-type]
    reply.metadata.__dict__["_message_id"] = "r"
    fed, _ = strategy.aggregate_train(1, [reply])
    fed_np = to_numpy(fed)

    # Centralized: the same data, order and optimizer, E steps on the same starting weights.
    task = SiteTask.from_record(msg.content["config"])
    data = load_site_data(ctx.node_config, task)
    torch.manual_seed(task.train.seed)
    model = build(task.spec)
    load_state(model, w0)
    examples = encode(
        task.tokenizer, data.train_texts, task.max_length, data.train_labels, task.labels
    )
    # The same call the ClientApp makes (round 1's data order, local_steps from the task).
    assert task.local_steps == steps
    local_train(model, examples, task)
    central = {k: v.numpy() for k, v in model_state(model).items()}
    moved = 0.0
    for k in central:
        # w0 + (w_E - w0) == w_E up to float32 rounding of the subtraction/addition.
        np.testing.assert_allclose(fed_np[k], central[k], rtol=1e-5, atol=1e-6, err_msg=k)
        moved = max(moved, float(np.abs(central[k] - w0[k]).max()))
    assert moved > 1e-4  # training really changed the weights


def test_run_writes_metrics_checkpoints_export_and_resumes(cache_dir, tmp_path):
    run_dir = tmp_path / "run"

    def corrupt_node_2(reply: Message) -> Message:
        # Site 2 sends a NaN update every round: rejected, the round goes on with the others.
        if reply.metadata.message_type == MessageType.TRAIN and reply.metadata.src_node_id == 2:
            arrays = to_numpy(reply.content["arrays"])
            bad = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
            reply.content["arrays"] = from_numpy(bad)
        return reply

    j = job(
        cache_dir, "federation.num_sites=3", "federation.num_rounds=2", "federation.min_sites=2"
    )
    grid = LocalGrid(
        client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], corrupt_node_2
    )
    result = run_federated(grid, j, run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["train"]["sites-accepted"] == 2 and r["train"]["sites-rejected"] == 1
        assert not r["skipped"]
        assert any("NaN" in s.get("rejected", "") for s in r["sites"].values())
        assert r["bytes_up"] > 0 and r["bytes_down"] > r["bytes_up"]
    assert {"accuracy", "macro-f1", "eval-loss"} <= set(rows[-1]["eval"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "round-0001",
        "round-0002",
    ]
    assert result.metric("accuracy")[0] == rows[0]["eval"]["accuracy"]

    # The export loads with plain transformers and classifies.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(result.export_dir))
    tok = AutoTokenizer.from_pretrained(str(result.export_dir))
    assert model.config.id2label[0] == "negative"
    with torch.no_grad():
        logits = model(**tok(["what a great day"], return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    ckpt = load_file_arrays(run_dir / "checkpoints" / "round-0002" / "global.safetensors")
    exported = dict(model.named_parameters())
    np.testing.assert_allclose(
        ckpt["score.weight"], exported["score.weight"].detach().numpy(), rtol=1e-6
    )

    # Resume: same run dir, one more round; only round 3 runs.
    j3 = job(
        cache_dir, "federation.num_sites=3", "federation.num_rounds=3", "federation.min_sites=2"
    )
    grid3 = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    run_federated(grid3, j3, run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert grid3.messages_handled == 3 + 3  # one train and one evaluate per site


def load_file_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_site_with_a_data_path(cache_dir, tmp_path):
    """A real site: only a local file in its node config; labels checked against the server's."""
    f = tmp_path / "site.csv"
    f.write_text(
        "text,label\n"
        + "".join(f"tweet {i},{'positive' if i % 2 else 'negative'}\n" for i in range(20))
    )
    setup = prepare(job(cache_dir))
    state = {k: v.numpy() for k, v in model_state(setup.model).items()}
    reply = client_train(train_message(setup, from_numpy(state)), _Ctx({"data-path": str(f)}))  # type: ignore[arg-type]
    assert reply.content["metrics"]["num-examples"] == 16
    assert reply.content["site"]["name"] == "site"
    f.write_text("text,label\n" + "hello,angry\n" * 5)  # the site's file changed: re-read
    with pytest.raises(ValueError, match="angry"):
        client_train(train_message(setup, from_numpy(state)), _Ctx({"data-path": str(f)}))  # type: ignore[arg-type]
