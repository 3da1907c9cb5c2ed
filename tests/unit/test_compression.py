"""Update compression: codecs (fp16, int8, top-k + error feedback), strict decoding, the site
stage with persistent residuals, and the server rejecting malformed compressed replies while
counting exact wire bytes (LocalGrid, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.client_app import app as client_app
from clients.compression import RESIDUAL, CompressStage, error_feedback
from clients.pipeline import SiteContext
from clients.site_state import site_store
from orchestrator.config import load_config
from orchestrator.config.compression import CompressionConfig
from orchestrator.config.federated import FederatedJob
from orchestrator.config.schema import FieldError
from orchestrator.contract.arrays import from_numpy, to_array
from orchestrator.contract.compression import (
    CODES,
    IDX,
    SCALES,
    VAL,
    CodecError,
    decode,
    decode_record,
    encode_fp16,
    encode_int8,
    encode_topk,
    quantize_int8,
    topk_budget,
)
from orchestrator.contract.messages import wire_bytes
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.federated.setup import prepare

ensure_task_identity()


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(33, 17)).astype(np.float32),
        "b": (rng.normal(size=40) * 1e-4).astype(np.float32),
        "z": np.zeros((3, 5), np.float32),
    }


def ref_of(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in a.items()}


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{"kind": "int4"}, {"ratio": 0.0}, {"ratio": 0.9}, {"block_size": 4}, {"download": "int8"}],
)
def test_config_rejects_bad_values_naming_the_key(bad):
    with pytest.raises(FieldError) as e:
        CompressionConfig(**bad)
    assert next(iter(bad)) in str(e.value)


def test_config_section_is_part_of_the_job_and_the_site_task(cache_dir):
    j = load_config(
        FederatedJob,
        None,
        [f"data.cache_dir={cache_dir}", "compression.kind=topk", "compression.ratio=0.05"],
        default_preset="simulate-demo",
    )
    assert j.compression.kind == "topk" and j.compression.ratio == 0.05


# ---- codecs ----------------------------------------------------------------------------------


def test_fp16_round_trip_and_clipping():
    a = arrays()
    a["big"] = np.array([1e6, -1e6, 1.5], np.float32)
    enc = encode_fp16(a)
    assert all(v.dtype == np.float16 for v in enc.values())
    out = decode(enc, "fp16", ref_of(a))
    np.testing.assert_allclose(out["w"], a["w"], rtol=1e-3, atol=1e-4)
    assert out["big"].tolist() == [65504.0, -65504.0, 1.5]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 700),
    st.sampled_from([8, 64, 256]),
    st.floats(1e-8, 1e4),
    st.integers(0, 2**31),
)
def test_int8_round_trip_error_within_one_step_of_its_block(n, block, scale, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    codes, scales = quantize_int8(x, block, np.random.default_rng(seed + 1))
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    y = decode({CODES: codes, SCALES: scales}, "int8", {"x": x}, block)["x"]
    step = np.repeat(scales, block)[:n]
    # stochastic rounding moves each value by less than one quantization step (+ float32 eps)
    assert (np.abs(y - x) <= step * (1 + 1e-5) + 1e-30).all()


def test_int8_is_unbiased():
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    rng = np.random.default_rng(0)
    mean = np.zeros_like(x, dtype=np.float64)
    reps = 400
    for _ in range(reps):
        c, s = quantize_int8(x, 256, rng)
        mean += c.astype(np.float64) * s[0]
    step = 1 / 127
    # E[decoded] = x; the mean of 400 draws is within ~4 standard errors (step / 2 / sqrt(400))
    assert np.abs(mean / reps - x).max() < 4 * step / 2 / np.sqrt(reps)


def test_topk_error_feedback_identity_is_exact():
    update = arrays(1)
    residual = {k: v * 0.5 for k, v in arrays(2).items()}
    enc, new_res = error_feedback(update, residual, 0.05)
    sent = decode(enc, "topk", ref_of(update))
    for k in update:
        # transmitted + residual == true (corrected) update, bit for bit
        assert np.array_equal(sent[k] + new_res[k], update[k] + residual[k])
    total = sum(v.size for v in update.values())
    assert enc[IDX].size == topk_budget(total, 0.05)
    # what was sent are the largest magnitudes of the corrected update
    corrected = np.concatenate([(update[k] + residual[k]).ravel() for k in update])
    kept = enc[VAL]
    assert np.abs(kept).min() >= np.sort(np.abs(corrected))[-len(kept)]


def test_encoded_sizes_match_the_compression_ratio():
    a = {"w": np.random.default_rng(0).normal(size=100_000).astype(np.float32)}
    fp32 = sum(len(x.data) for x in from_numpy(a).values())
    int8 = sum(
        len(x.data) for x in from_numpy(encode_int8(a, 256, np.random.default_rng(0))).values()
    )
    topk = sum(len(x.data) for x in from_numpy(encode_topk(a, 0.01)[0]).values())
    assert 3.9 < fp32 / int8 < 4.0
    assert 45 < fp32 / topk < 50


# ---- strict decoding -------------------------------------------------------------------------


def _record(enc: dict[str, np.ndarray]) -> ArrayRecord:
    return from_numpy(enc)


@pytest.mark.parametrize(
    "kind,mutate,reason",
    [
        ("topk", lambda e: e.update({IDX: e[IDX][::-1].copy()}), "increasing"),
        ("topk", lambda e: e.update({IDX: np.repeat(e[IDX][:1], len(e[IDX]))}), "increasing"),
        ("topk", lambda e: e[IDX].__setitem__(-1, 10**6), "out of range"),
        ("topk", lambda e: e[IDX].__setitem__(0, -1), "out of range"),
        ("topk", lambda e: e[VAL].__setitem__(0, np.inf), "NaN or Inf"),
        ("topk", lambda e: e.update({IDX: e[IDX].astype(np.int64)}), "dtype"),
        ("topk", lambda e: e.update({VAL: e[VAL][:-1].copy()}), "shape"),
        ("topk", lambda e: e.pop(VAL), "keys differ"),
        ("int8", lambda e: e[SCALES].__setitem__(0, np.nan), "NaN or Inf"),
        ("int8", lambda e: e[SCALES].__setitem__(0, -1.0), "negative"),
        ("int8", lambda e: e[CODES].__setitem__(0, -128), "-128"),
        ("int8", lambda e: e.update({CODES: e[CODES].astype(np.int16)}), "dtype"),
        ("int8", lambda e: e.update({SCALES: e[SCALES][:-1].copy()}), "shape"),
        ("int8", lambda e: e.update({"w": e[CODES]}), "keys differ"),
        ("fp16", lambda e: e.update({"w": e["w"].reshape(-1)}), "shape"),
        ("fp16", lambda e: e["b"].__setitem__(0, np.nan), "NaN or Inf"),
        ("fp16", lambda e: e.update({"extra": e["b"]}), "keys differ"),
    ],
)
def test_malformed_encodings_are_refused_with_a_reason(kind, mutate, reason):
    a = arrays()
    enc = {
        "fp16": lambda: encode_fp16(a),
        "int8": lambda: encode_int8(a, 64, np.random.default_rng(0)),
        "topk": lambda: encode_topk(a, 0.1)[0],
    }[kind]()
    enc = {k: np.array(v) for k, v in enc.items()}
    mutate(enc)
    with pytest.raises(CodecError, match=reason):
        decode_record(_record(enc), kind, ref_of(a), 64, 0.1)


def test_topk_over_budget_and_size_bombs_are_refused_before_parsing():
    a = arrays()
    enc, _ = encode_topk(a, 0.5)
    with pytest.raises(CodecError, match="budget"):
        decode_record(_record(enc), "topk", ref_of(a), 64, 0.01)
    # A declared shape of 10^12 entries is refused from the metadata; the payload is never read.
    bomb = dict(_record(encode_topk(a, 0.01)[0]).items())
    bomb[IDX] = Array(dtype="int32", shape=(10**12,), stype="numpy.ndarray", data=b"")
    with pytest.raises(CodecError, match="budget"):
        decode_record(ArrayRecord(bomb), "topk", ref_of(a), 64, 0.01)
    bomb = dict(_record(encode_fp16(a)).items())
    bomb["w"] = Array(dtype="float16", shape=(10**6, 10**6), stype="numpy.ndarray", data=b"")
    with pytest.raises(CodecError, match="shape"):
        decode_record(ArrayRecord(bomb), "fp16", ref_of(a), 64, 0.01)


_DTYPES = ["int8", "int16", "int32", "int64", "float16", "float32", "float64", "uint8", "bool"]


@st.composite
def _arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=2)))
    n = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["fp16", "int8", "topk"]),
    st.dictionaries(
        st.sampled_from(["w", "b", IDX, VAL, CODES, SCALES, "x"]),
        _arrays(),
        max_size=6,
    ),
    st.booleans(),
    st.binary(max_size=64),
)
def test_decoders_never_crash_on_random_payloads(kind, payload, garble, noise):
    ref = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
    rec = ArrayRecord({k: to_array(v) for k, v in payload.items()})
    if garble and rec:  # random bytes where a .npy payload should be
        k = next(iter(rec.keys()))
        a = rec[k]
        rec[k] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=noise)
    try:
        out = decode_record(rec, kind, ref, 8, 0.5)
    except CodecError:
        return
    assert set(out) == set(ref)
    for k, v in out.items():
        assert v.shape == ref[k].shape and v.dtype == np.float32 and np.isfinite(v).all()


# ---- the site stage: error feedback persists as site state ------------------------------------


def _stage_run(state_dir: Path, server_round: int, update: dict[str, np.ndarray]):
    """One round of a real site's compression stage as a fresh process: a new Context each
    call, the residual only on disk (the site's ``state-dir``)."""
    flwr_ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    node_config = {"data-path": "/dev/null", "state-dir": str(state_dir)}
    store = site_store(flwr_ctx, "runtoken", server_round, node_config)
    cfg = CompressionConfig(kind="topk", ratio=0.05)
    ctx = SiteContext(task=None, site="bank-a", node_config=node_config, state=store)  # type: ignore[arg-type]
    return CompressStage(cfg, seed=1, server_round=server_round)(update, ctx)


def test_residual_survives_restarts_and_a_resumed_round_is_exact(tmp_path):
    u1, u2, u3 = arrays(11), arrays(12), arrays(13)
    d = tmp_path / "state"
    e1 = _stage_run(d, 1, u1)
    e2 = _stage_run(d, 2, u2)
    # The server crashed before checkpointing round 2 and re-runs it: same residual in, same out.
    e2_again = _stage_run(d, 2, u2)
    assert all(np.array_equal(e2[k], e2_again[k]) for k in e2)
    e3 = _stage_run(d, 3, u3)
    # Nothing is lost: everything sent over 3 rounds + the residual left == the sum of updates.
    ref = ref_of(u1)
    sent = {k: sum(decode(e, "topk", ref)[k] for e in (e1, e2, e3)) for k in ref}
    flwr_ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    store = site_store(flwr_ctx, "runtoken", 4, {"data-path": "x", "state-dir": str(d)})
    residual = store.load(RESIDUAL)
    assert residual is not None
    for k in ref:
        np.testing.assert_allclose(sent[k] + residual[k], u1[k] + u2[k] + u3[k], atol=1e-6)


# ---- through the server: rejection and exact bytes (LocalGrid) --------------------------------


def _job(cache_dir: Path, *overrides: str) -> FederatedJob:
    small = [
        f"data.cache_dir={cache_dir}",
        "model.path=null",  # build the small model below (not the bundled one)
        "model.d_model=32",
        "model.n_head=2",
        "model.n_layer=1",
        "data.tokenizer.vocab_size=512",
        "task.max_length=24",
        "partition.max_examples_per_site=40",
        "finetune.local_steps=1",
        "train.micro_batch_size=8",
        "federation.num_sites=2",
        "federation.num_rounds=1",
        "federation.min_sites=1",
        "federation.eval_every=1",  # every round evaluated (the demo preset: every 5th)
        "data.tokenizer.path=null",  # train the tiny tokenizer (the preset bundles a larger one)
        "logging.tensorboard=false",  # no event writers: not what these tests are about
    ]
    return load_config(FederatedJob, None, [*small, *overrides], default_preset="simulate-demo")


@pytest.mark.parametrize("kind", ["topk"])  # int8 rejections: the decoder tests above
def test_server_rejects_a_malformed_compressed_reply_and_counts_wire_bytes(
    cache_dir, tmp_path, kind
):
    sent_up: dict[int, int] = {}
    payload: list[int] = []

    def corrupt_node_2(reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.TRAIN and reply.metadata.src_node_id == 2:
            rec = reply.content["arrays"]
            key = IDX if kind == "topk" else SCALES
            a = np.full(rec[key].shape, -1, dtype=np.int32 if kind == "topk" else np.float32)
            rec[key] = to_array(a)  # index -1 / negative scales
        elif reply.metadata.message_type == MessageType.TRAIN:
            payload.append(wire_bytes(reply.content["arrays"]))
        node = reply.metadata.src_node_id
        sent_up[node] = sent_up.get(node, 0) + wire_bytes(reply)
        return reply

    j = _job(cache_dir, f"compression.kind={kind}", "compression.ratio=0.02")
    grid = LocalGrid(
        client_app, [{"partition-id": i, "num-partitions": 2} for i in range(2)], corrupt_node_2
    )
    run_dir = tmp_path / "run"
    run_federated(grid, j, run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    r1 = rows[1]
    assert r1["train"]["sites-accepted"] == 1 and r1["train"]["sites-rejected"] == 1
    rejected = [s for s in r1["sites"].values() if "rejected" in s]
    assert len(rejected) == 1 and kind in rejected[0]["rejected"]
    # Per-site bytes are what each site's replies serialize to; the totals add up.
    assert r1["bytes_up"] == sum(s["bytes-up"] for s in r1["sites"].values())
    assert r1["bytes_down"] == sum(s["bytes-down"] for s in r1["sites"].values())
    assert rows[0]["bytes_up"] + r1["bytes_up"] == sum(sent_up.values())
    # The encoded update is a fraction of the float32 one (this tiny model has many small
    # tensors, so per-array headers weigh more than in a real model).
    model = prepare(j).model
    fp32 = wire_bytes(from_numpy({k: p.detach().numpy() for k, p in model.named_parameters()}))
    assert len(payload) == 1
    assert all(fp32 / p > (2.5 if kind == "int8" else 5) for p in payload), (fp32, payload)


# ---- LoRA: the frozen base goes to a site once ------------------------------------------------


class RecordingGrid(LocalGrid):
    """Remembers, per pushed message: (server round, type, node, number of tensors)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[int, str, int, int]] = []

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            rnd = int(m.content["config"]["server-round"])
            n = len(m.content["arrays"])
            self.sent.append((rnd, m.metadata.message_type, m.metadata.dst_node_id, n))
        return super().push_messages(messages)


def test_lora_base_goes_once_and_a_site_that_lost_it_gets_the_full_model(cache_dir, tmp_path):
    j = _job(
        cache_dir,
        "finetune.mode=lora",
        "finetune.lora_r=2",
        "federation.num_rounds=2",
        "compression.kind=int8",
    )
    grid: RecordingGrid

    def site_2_restarts_after_round_1(reply: Message) -> Message:
        md = reply.metadata
        last_round = int(grid.sent[-1][0])
        if md.message_type == MessageType.EVALUATE and md.src_node_id == 2 and last_round == 1:
            grid.contexts[2].state = RecordDict()  # its SuperNode restarts without state
        return reply

    grid = RecordingGrid(
        client_app,
        [{"partition-id": i, "num-partitions": 2} for i in range(2)],
        site_2_restarts_after_round_1,
    )
    run_dir = tmp_path / "run"
    run_federated(grid, j, run_dir)
    setup = prepare(j)
    trainable, full = len(setup.update_keys), len(model_state_keys(setup))
    sent = {(r, t[:5], n): k for r, t, n, k in grid.sent}
    assert all(sent[(0, "evalu", n)] == full for n in (1, 2))  # first contact: everything
    assert all(sent[(1, "train", n)] == trainable for n in (1, 2))  # later: adapters + head
    assert all(sent[(1, "evalu", n)] == trainable for n in (1, 2))
    assert sent[(2, "train", 2)] == trainable  # the server did not know site 2 lost it ...
    assert sent[(2, "evalu", 2)] == full  # ... until its error reply: full model next message
    assert sent[(2, "evalu", 1)] == trainable
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["train"]["sites-rejected"] == 1
    assert any("holds no LoRA base" in s.get("rejected", "") for s in rows[2]["sites"].values())
    # the base is sent twice (round 0) + once more (site 2), not with every message
    assert rows[1]["bytes_down"] < rows[0]["bytes_down"] / 2


def model_state_keys(setup) -> list[str]:
    from orchestrator.contract.model import model_state

    return list(model_state(setup.model))


def test_a_base_hash_that_is_not_a_digest_is_refused_before_touching_disk(tmp_path):
    from clients.base_cache import with_base

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    cfg = {"data-path": "x.csv", "state-dir": str(tmp_path)}
    with pytest.raises(ValueError, match="not a SHA-256"):
        with_base({"a": np.zeros(1, np.float32)}, "../../etc/passwd", ["a", "b"], ["a"], ctx, cfg)
    assert not any(tmp_path.iterdir())


def test_a_real_site_keeps_the_base_on_disk_across_restarts(tmp_path):
    from clients.base_cache import MissingBase, with_base
    from orchestrator.contract.compression import base_hash

    def fresh() -> Context:  # a restarted SuperNode: empty Context.state
        return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    cfg = {"data-path": "x.csv", "state-dir": str(tmp_path)}
    full = {"base": np.arange(6, dtype=np.float32), "lora": np.ones(2, np.float32)}
    digest = base_hash({"base": full["base"]})
    keys, trainable = ["base", "lora"], ["lora"]
    with_base(full, digest, keys, trainable, fresh(), cfg)
    light = {"lora": np.full(2, 3.0, np.float32)}
    out = with_base(light, digest, keys, trainable, fresh(), cfg)
    assert np.array_equal(out["base"], full["base"]) and np.array_equal(out["lora"], light["lora"])
    # a corrupted cache no longer matches the hash: the site asks for the full model
    (f,) = (tmp_path / "lora-base").glob("*.safetensors")
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(MissingBase):
        with_base(light, digest, keys, trainable, fresh(), cfg)
    with pytest.raises(MissingBase):  # a new run's base
        with_base(
            light, base_hash({"base": np.zeros(6, np.float32)}), keys, trainable, fresh(), cfg
        )


def test_compression_with_secure_aggregation_is_a_config_error(cache_dir):
    from orchestrator.config import ConfigError

    with pytest.raises((ConfigError, FieldError, SystemExit), match="secure_aggregation"):
        load_config(
            FederatedJob,
            None,
            [
                f"data.cache_dir={cache_dir}",
                "compression.kind=int8",
                "privacy.secure_aggregation=true",
            ],
            default_preset="simulate-demo",
        )


def test_round_table_shows_each_sites_bytes():
    import io

    from rich.console import Console

    from orchestrator.federated.report import RoundTable

    out = io.StringIO()
    rec = {"round": 1, "sites": {"bank-a": {"bytes-up": 704_000, "bytes-down": 2_748_000}}}
    RoundTable("classification", console=Console(file=out, width=200)).row(rec)
    assert "bank-a:  up 0.704 MB down 2.748 MB" in out.getvalue()
