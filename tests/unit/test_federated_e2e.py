"""End-to-end federated paths in one process (LocalGrid: the real ClientApp, no Ray).

- causal LM: 3 sites with local .txt files, 2 rounds; perplexity per round improves on round 0;
  the export reloads with plain transformers in a fresh interpreter with the server's logits;
- LoRA: replies hold only adapters, the base weights never move, the export is merged;
- FedProx at the site: the proximal term shrinks the update, and mu=0 is FedAvg bit for bit;
- our FedAvg / FedAdam under Flower's stock ``Strategy.start`` in a plain ServerApp, with the
  global model the hand-written math gives for the replies the sites really sent;
- streaming: each reply is folded before the next site has even run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from clients.client_app import app as client_app
from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.contract.arrays import Arrays, from_numpy, to_numpy
from orchestrator.contract.model import ModelSpec, build, load_state, model_state
from orchestrator.data.sources import DEMO_LABELLED, demo_path, read_columns
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import FederatedResult, run_federated
from orchestrator.federated.setup import ServerSetup, prepare
from strategies import FedAdam, FedAvg, FedProx, stream_replies
from strategies.base import DeltaStrategy

ensure_task_identity()

SMALL = [
    "data.tokenizer.path=null",  # a BPE of data.tokenizer.vocab_size, not the bundled one
    "federation.eval_every=1",  # every round evaluated (the demo preset: every 5th)
    "model.path=null",  # build the small model below (not the bundled one)
    "model.d_model=32",
    "model.n_head=2",
    "model.n_layer=1",
    "data.tokenizer.vocab_size=512",
    "task.max_length=24",
    "train.micro_batch_size=8",
]


def make_job(cache_dir: Path, *overrides: str) -> FederatedJob:
    return load_config(
        FederatedJob,
        None,
        [f"data.cache_dir={cache_dir}", *SMALL, *overrides],
        default_preset="simulate-demo",
    )


def state_of(model: torch.nn.Module) -> Arrays:
    return {k: v.numpy().copy() for k, v in model_state(model).items()}


def norm(arrays: Arrays) -> float:
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays.values())))


# ---- causal LM and LoRA runs through the real server loop ---------------------------------------


def site_text_files(root: Path, num_sites: int, per_site: int = 40) -> list[Path]:
    """Each site's own .txt file (one example per line): slices of the demo tweets."""
    texts, _, _ = read_columns(str(demo_path(DEMO_LABELLED)), "text", "label", "")
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(num_sites):
        f = root / f"hospital-{i}.txt"
        chunk = texts[i * per_site : (i + 1) * per_site]
        f.write_text("\n".join(t.replace("\n", " ") for t in chunk) + "\n")
        files.append(f)
    return files


class CausalRun:
    """One causal-LM federation: the job, its setup, what sites sent and what the server kept."""

    def __init__(self, cache_dir: Path, root: Path, *extra: str) -> None:
        files = site_text_files(root / "sites", 3)
        self.job = make_job(
            cache_dir,
            "task.kind=causal_lm",
            "federation.num_sites=3",
            "federation.num_rounds=2",
            "federation.min_sites=3",
            "finetune.local_steps=3",
            "train.lr=0.01",
            *extra,
        )
        self.setup: ServerSetup = prepare(self.job)
        self.initial: Arrays = state_of(self.setup.model)
        self.train_replies: list[tuple[list[str], int, int]] = []  # keys, payload bytes, n

        def record(reply: Message) -> Message:
            if reply.metadata.message_type == MessageType.TRAIN and not reply.has_error():
                rec = reply.content["arrays"]
                n = int(reply.content["metrics"]["num-examples"])
                self.train_replies.append(
                    (list(rec.keys()), sum(len(a.data) for a in rec.values()), n)
                )
            return reply

        grid = LocalGrid(
            client_app,
            [{"data-path": str(f), "site-name": f.stem} for f in files],
            intercept=record,
        )
        self.result: FederatedResult = run_federated(grid, self.job, root / "run")
        from safetensors.numpy import load_file

        self.final: Arrays = load_file(
            str(root / "run" / "checkpoints" / "round-0002" / "global.safetensors")
        )

    def server_model(self) -> torch.nn.Module:
        """The server's final global model, rebuilt from its spec (LoRA-wrapped in LoRA mode)."""
        model = build(ModelSpec.from_json(self.setup.spec.to_json()))
        load_state(model, self.final)
        return model.eval()


@pytest.fixture(scope="module")
def causal_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CausalRun:
    return CausalRun(cache_dir, tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def lora_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CausalRun:
    return CausalRun(
        cache_dir,
        tmp_path_factory.mktemp("lora"),
        "finetune.mode=lora",
        "finetune.lora_r=4",
        "finetune.lora_alpha=8",
    )


PROBE = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(7))

_FRESH = """
import json, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM
out = {}
probe = torch.tensor(json.loads(sys.argv[1]))
for d in sys.argv[2:]:
    m = AutoModelForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        np.save(d + ".logits.npy", m(input_ids=probe).logits.numpy())
    out[d] = {"class": type(m).__name__, "keys": list(m.state_dict())}
out["imported"] = sorted(
    k for k in sys.modules if k.split(".")[0] in ("peft", "orchestrator", "clients", "strategies")
)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_load(causal_run: CausalRun, lora_run: CausalRun) -> dict[str, Any]:
    """Both exports loaded by plain transformers in a new interpreter outside the repo."""
    dirs = [str(causal_run.result.export_dir), str(lora_run.result.export_dir)]
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps(PROBE.tolist()), *dirs],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for d in dirs:
        info[d]["logits"] = np.load(d + ".logits.npy")
    return info


@pytest.mark.integration  # in-process but ~5-9 s: keeps the unit tier under a minute
def test_causal_lm_two_rounds_perplexity_improves(causal_run: CausalRun) -> None:
    rounds = causal_run.result.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    ppl = causal_run.result.metric("perplexity")
    loss = causal_run.result.metric("eval-loss")
    assert all(p is not None and np.isfinite(p) for p in ppl), ppl
    for p, lo in zip(ppl, loss, strict=True):
        assert p == pytest.approx(np.exp(lo), rel=1e-6)  # perplexity = exp(token loss)
    assert ppl[1] < ppl[0] and ppl[2] < ppl[0] * 0.9, ppl
    for r in rounds[1:]:
        assert r["train"]["sites-accepted"] == 3 and r["train"]["sites-rejected"] == 0
        assert set(r["sites"]) == {"hospital-0", "hospital-1", "hospital-2"}
        assert all("perplexity" in s for s in r["sites"].values())
    assert "accuracy" not in rounds[-1]["eval"]
    # Full fine-tuning: a reply holds every trainable tensor (GPT-2's tied lm_head once).
    keys, _, n = causal_run.train_replies[0]
    assert set(keys) == set(causal_run.setup.update_keys) and "lm_head.weight" not in keys
    assert n == 32  # 40 lines, 20% held out for evaluation


@pytest.mark.integration  # in-process but ~5-9 s: keeps the unit tier under a minute
def test_causal_lm_export_reloads_in_a_fresh_interpreter_with_the_servers_logits(
    causal_run: CausalRun, fresh_load: dict[str, Any]
) -> None:
    got = fresh_load[str(causal_run.result.export_dir)]
    assert got["class"] == "GPT2LMHeadModel"
    assert not fresh_load["imported"], fresh_load["imported"]
    with torch.no_grad():
        expected = causal_run.server_model()(input_ids=PROBE).logits.numpy()
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-5, atol=1e-5)
    # The final model is not the starting one (the logits would match trivially otherwise).
    start = build(causal_run.setup.spec)
    load_state(start, causal_run.initial)
    with torch.no_grad():
        before = start.eval()(input_ids=PROBE).logits.numpy()
    assert np.abs(before - expected).max() > 1e-2


def test_lora_replies_hold_only_adapters_and_base_weights_never_move(lora_run: CausalRun) -> None:
    update_keys = set(lora_run.setup.update_keys)
    assert update_keys and all(("lora_A" in k or "lora_B" in k) for k in update_keys)
    params = dict(lora_run.setup.model.named_parameters())
    adapter_bytes = sum(params[k].numel() * 4 for k in update_keys)
    full_bytes = sum(v.nbytes for v in lora_run.initial.values())
    assert len(lora_run.train_replies) == 3 * 2  # every reply of both rounds
    for keys, sent, _ in lora_run.train_replies:
        assert set(keys) == update_keys
        assert adapter_bytes <= sent <= adapter_bytes + 128 * len(keys)  # + .npy headers
        assert sent < 0.2 * full_bytes
    # The server keeps base + adapters; aggregation moved only the adapters.
    assert set(lora_run.final) == set(lora_run.initial)
    for k, v in lora_run.initial.items():
        if k in update_keys:
            continue
        np.testing.assert_array_equal(lora_run.final[k], v, err_msg=k)
    moved = [k for k in update_keys if "lora_B" in k]
    assert moved and all(np.abs(lora_run.final[k]).max() > 0 for k in moved)  # B starts at 0
    ppl = lora_run.result.metric("perplexity")
    assert ppl[2] < ppl[0], ppl


@pytest.mark.integration  # loads the export in a fresh interpreter (subprocess): ~5-9 s
def test_lora_export_is_a_merged_plain_model_with_the_servers_logits(
    lora_run: CausalRun, fresh_load: dict[str, Any]
) -> None:
    export_dir = lora_run.result.export_dir
    got = fresh_load[str(export_dir)]
    assert got["class"] == "GPT2LMHeadModel"
    assert not (export_dir / "adapter_config.json").exists()
    assert not any("lora" in k or "base_model" in k for k in got["keys"]), got["keys"][:5]
    assert not fresh_load["imported"], fresh_load["imported"]
    with torch.no_grad():
        expected = lora_run.server_model()(input_ids=PROBE).logits.numpy()
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-5, atol=1e-5)
    # Merged by hand: GPT-2's Conv1D weight is (in, out), so W' = W + (alpha/r) * (B @ A)^T.
    from safetensors.numpy import load_file

    exported = load_file(str(export_dir / "model.safetensors"))
    prefix = "base_model.model.transformer.h.0.attn.c_attn."
    f = lora_run.final
    a, b = f[prefix + "lora_A.default.weight"], f[prefix + "lora_B.default.weight"]
    w = f[prefix + "base_layer.weight"]
    merged = w + (8 / 4) * (b @ a).T
    np.testing.assert_allclose(exported["transformer.h.0.attn.c_attn.weight"], merged, atol=1e-6)
    assert np.abs(merged - w).max() > 1e-4  # the adapters are really in there


# ---- FedProx at the site -------------------------------------------------------------------------


def one_round_update(
    strategy: DeltaStrategy, setup: ServerSetup, arrays: ArrayRecord, grid: LocalGrid
) -> Arrays:
    msgs = list(strategy.configure_train(1, arrays, setup.task.to_record(), grid))
    (reply,) = grid.send_and_receive(msgs, timeout=120)
    assert not reply.has_error(), reply.error.reason
    return {k: v.copy() for k, v in to_numpy(reply.content["arrays"]).items()}


@pytest.mark.integration  # in-process but ~5-9 s: keeps the unit tier under a minute
def test_fedprox_term_is_applied_at_the_site(cache_dir: Path) -> None:
    j = make_job(
        cache_dir,
        "federation.num_sites=1",
        "federation.min_sites=1",
        "partition.kind=iid",
        "partition.max_examples_per_site=40",
        "finetune.local_steps=6",
        "train.lr=0.01",
    )
    setup = prepare(j)
    arrays = from_numpy(state_of(setup.model))
    grid = LocalGrid(client_app, [{"partition-id": 0, "num-partitions": 1}])
    fedavg = one_round_update(FedAvg(), setup, arrays, grid)
    prox0 = one_round_update(FedProx(proximal_mu=0.0), setup, arrays, grid)
    prox_big = one_round_update(FedProx(proximal_mu=1000.0), setup, arrays, grid)
    # mu = 0 is FedAvg exactly (same data order, same seed): bit-identical updates.
    assert set(prox0) == set(fedavg)
    for k in fedavg:
        np.testing.assert_array_equal(prox0[k], fedavg[k], err_msg=k)
    # A large mu pulls the site's weights back to the global model: a much smaller update.
    assert norm(prox_big) < 0.5 * norm(fedavg), (norm(prox_big), norm(fedavg))
    assert norm(prox_big) > 0


# ---- our strategies in a stock Flower ServerApp ---------------------------------------------------


def fedavg_by_hand(w: Arrays, replies: list[tuple[Arrays, float]]) -> Arrays:
    total = sum(n for _, n in replies)
    return {
        k: w[k].astype(np.float64) + sum(n * d[k].astype(np.float64) for d, n in replies) / total
        for k in w
    }


class AdamByHand:
    """Reddi et al. 2021 FedAdam in float64: m, v from zero, no bias correction."""

    def __init__(self, eta: float, b1: float, b2: float, tau: float) -> None:
        self.eta, self.b1, self.b2, self.tau = eta, b1, b2, tau
        self.m: Arrays = {}
        self.v: Arrays = {}

    def step(self, w: Arrays, replies: list[tuple[Arrays, float]]) -> Arrays:
        mean = {k: fedavg_by_hand(w, replies)[k] - w[k].astype(np.float64) for k in w}
        out = {}
        for k, d in mean.items():
            self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * d
            self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * d * d
            out[k] = w[k] + self.eta * self.m[k] / (np.sqrt(self.v[k]) + self.tau)
        return out


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_our_strategy_runs_in_a_stock_flower_serverapp(cache_dir: Path, name: str) -> None:
    j = make_job(
        cache_dir,
        "federation.num_sites=3",
        "federation.min_sites=3",
        "partition.kind=iid",
        "partition.max_examples_per_site=30",
        "finetune.local_steps=2",
    )
    setup = prepare(j)
    initial = state_of(setup.model)
    sent: list[tuple[Arrays, float]] = []

    def record(reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.TRAIN:
            d = {k: v.copy() for k, v in to_numpy(reply.content["arrays"]).items()}
            sent.append((d, float(reply.content["metrics"]["num-examples"])))
        return reply

    grid = LocalGrid(
        client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], intercept=record
    )
    # Stock use: no update_keys, Flower's defaults otherwise.
    strategy: DeltaStrategy = FedAvg() if name == "fedavg" else FedAdam(eta=0.01, tau=1e-3)
    app = ServerApp()
    results: list[Any] = []

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # The stock ServerApp body: initial arrays from the model's state_dict, Strategy.start.
        results.append(
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(setup.model.state_dict()),
                num_rounds=2,
                timeout=120,
                train_config=setup.task.to_record(),
                evaluate_config=setup.task.to_record(),
            )
        )

    app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    (result,) = results
    assert len(sent) == 6, "3 sites x 2 rounds of training replies"
    final = to_numpy(result.arrays)
    assert set(final) == set(initial)
    assert max(float(np.abs(final[k] - initial[k]).max()) for k in initial) > 1e-4

    expected: Arrays = initial
    adam = AdamByHand(eta=0.01, b1=0.9, b2=0.99, tau=1e-3)
    for r in range(2):
        replies = sent[3 * r : 3 * r + 3]
        expected = (
            fedavg_by_hand(expected, replies) if name == "fedavg" else adam.step(expected, replies)
        )
        expected = {k: v.astype(np.float32) for k, v in expected.items()}
    for k in initial:
        np.testing.assert_allclose(final[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for rnd in (1, 2):
        train = result.train_metrics_clientapp[rnd]
        assert train["sites-accepted"] == 3 and train["sites-rejected"] == 0
        ev: MetricRecord = result.evaluate_metrics_clientapp[rnd]
        assert 0.0 <= ev["accuracy"] <= 1.0 and np.isfinite(ev["eval-loss"])


# ---- streaming: fold as replies arrive ---------------------------------------------------------


def test_each_reply_is_folded_before_the_next_site_runs() -> None:
    """LocalGrid runs a site only when pulled, so the grid's counter at each fold shows whether
    aggregation consumed replies one by one (1, 2, 3) or waited for all of them (3, 3, 3)."""
    sizes = {1: 10.0, 2: 30.0, 3: 60.0}

    def site(msg: Message, ctx: Context) -> Message:
        node = ctx.node_id
        content = RecordDict(
            {
                "arrays": from_numpy({"w": np.full(2, float(node), np.float32)}),
                "metrics": MetricRecord({"num-examples": sizes[node]}),
            }
        )
        return Message(content=content, reply_to=msg)

    grid = LocalGrid(site, [{}, {}, {}])  # type: ignore[arg-type]
    s = FedAvg()
    msgs = s.configure_train(1, from_numpy({"w": np.zeros(2, np.float32)}), ConfigRecord({}), grid)
    handled_at_fold: list[int] = []

    def watched(replies: Iterator[Message]) -> Iterator[Message]:
        for r in replies:
            handled_at_fold.append(grid.messages_handled)
            yield r

    arrays, _ = s.aggregate_train(1, watched(stream_replies(grid, msgs, timeout=30)))
    assert handled_at_fold == [1, 2, 3]
    # (10*1 + 30*2 + 60*3) / 100 = 2.5
    np.testing.assert_allclose(to_numpy(arrays)["w"], [2.5, 2.5])


# ---- resume with server-optimizer state ------------------------------------------------------------


def test_fedadam_run_resumed_after_round_1_equals_the_uninterrupted_run(
    cache_dir: Path, tmp_path: Path
) -> None:
    """FedAdam's m and v and the site-sampling RNG (2 of 3 sites per round) survive a restart."""
    from safetensors.numpy import load_file

    def run(run_dir: Path, rounds: int) -> FederatedResult:
        j = make_job(
            cache_dir,
            "strategy.name=fedadam",
            "federation.num_sites=3",
            "federation.sites_per_round=2",
            "federation.min_sites=2",
            f"federation.num_rounds={rounds}",
            "partition.kind=iid",
            "partition.max_examples_per_site=20",
            "finetune.local_steps=1",
        )
        grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
        return run_federated(grid, j, run_dir)

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 2)
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2]
    a = load_file(str(tmp_path / "straight/checkpoints/round-0002/global.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/round-0002/global.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    m_a = load_file(str(tmp_path / "straight/checkpoints/round-0002/strategy.safetensors"))
    assert m_a and any(np.abs(v).max() > 0 for v in m_a.values())  # moments were kept
    sites = [sorted(r["sites"]) for r in straight.rounds[1:]]
    train_sites = [
        sorted(s for s, row in r["sites"].items() if "train-loss" in row)
        for r in resumed.rounds[1:]
    ]
    assert train_sites == [
        sorted(s for s, row in r["sites"].items() if "train-loss" in row)
        for r in straight.rounds[1:]
    ]
    assert all(len(s) == 3 for s in sites) and all(len(s) == 2 for s in train_sites)


def test_stream_replies_backs_off_while_sites_are_busy_and_resets_on_a_reply(monkeypatch):
    """Empty pulls are requests the SuperLink serves: the wait grows x1.5 to 0.5 s, and starts
    again from 50 ms once a reply arrives."""
    import strategies.replies as replies

    class Reply:
        def __init__(self, mid: str) -> None:
            self.metadata = type("M", (), {"reply_to_message_id": mid})()

    class Grid:
        pulls = iter([[]] * 8 + [[Reply("a")]] + [[]] * 2 + [[Reply("b")]])

        def push_messages(self, msgs):
            return ["a", "b"]

        def pull_messages(self, ids):
            return next(self.pulls)

    waits: list[float] = []
    monkeypatch.setattr(replies.time, "sleep", waits.append)
    got = [r.metadata.reply_to_message_id for r in replies.stream_replies(Grid(), [], 1e9)]
    assert got == ["a", "b"]
    assert waits[:7] == pytest.approx([0.075, 0.1125, 0.16875, 0.253125, 0.3796875, 0.5, 0.5])
    assert waits[8:] == pytest.approx([0.075, 0.1125])  # after the reply: fast again
