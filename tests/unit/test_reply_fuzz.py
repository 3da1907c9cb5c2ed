"""No reply can crash the server: fuzzed train and evaluate replies in every strategy.

Hostile payloads (random bytes, truncated or lying ``.npy`` headers, object/pickled arrays, odd
dtypes and shapes, wrong record layouts, absurd or mistyped metrics) must each become a rejected
reply with a reason, and the round must still produce the honest sites' aggregate.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config.federated import STRATEGIES, FederatedJob
from orchestrator.config.loader import load_config
from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.federated.local_grid import ensure_task_identity
from strategies import build_strategy

ensure_task_identity()

GLOBAL = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
HONEST = {"w": np.ones((2, 3), np.float32), "b": np.full(3, 2.0, np.float32)}


def instruction(node: int, kind: str = MessageType.TRAIN) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=kind
    )
    ins.metadata.__dict__["_message_id"] = f"ins-{node}"
    return ins


def reply(content: RecordDict, node: int, kind: str = MessageType.TRAIN) -> Message:
    return Message(content=content, reply_to=instruction(node, kind))


def honest_replies(s=None) -> list[Message]:
    """Five identical honest replies (enough for Krum with f = 1)."""
    return [honest(100 + i, s) for i in range(5)]


def for_strategy(s, content: RecordDict) -> RecordDict:
    """``content`` plus an honest copy of each further array record the strategy asks for
    (SCAFFOLD's delta_c), so that only the part under test is hostile."""
    extra = {name: from_numpy(HONEST) for name in getattr(s, "reply_extra_arrays", ())}
    return RecordDict({**dict(content.items()), **extra}) if extra else content


def honest(node: int = 1, s=None) -> Message:
    content = RecordDict(
        {"arrays": from_numpy(HONEST), "metrics": MetricRecord({"num-examples": 10})}
    )
    return reply(for_strategy(s, content), node)


@functools.cache
def job_for(name: str) -> FederatedJob:
    """The job for ``name``, loaded once per strategy: the fuzz tests build hundreds of
    strategies, and parsing the config is most of each build's cost."""
    overrides = [f"strategy.name={name}", "federation.min_sites=1", "federation.num_sites=8"]
    return load_config(FederatedJob, None, overrides, "simulate-demo")


def strategy(name: str):
    """Built the way a run builds it (``build_strategy``), over a tiny two-tensor model; a fresh
    strategy (and a private copy of its job) every call."""
    s = build_strategy(copy.deepcopy(job_for(name)), update_keys=list(GLOBAL), num_classes=3)
    s._global = to_numpy(from_numpy(GLOBAL))
    return s


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def raw_array(data: bytes, dtype: str = "float32", shape=(3,)) -> Array:
    return Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data)


def with_b(b: Array, n: float | int | list = 10) -> RecordDict:
    """A reply whose ``w`` is honest and whose ``b`` is the hostile array."""
    good = from_numpy({"w": HONEST["w"]})
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": good["w"], "b": b}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )


HOSTILE_ARRAYS = {
    "empty payload": raw_array(b""),
    "garbage bytes": raw_array(b"\x00garbage" * 3),
    "truncated": raw_array(npy(np.ones(3, np.float32))[:-4]),
    "trailing bytes": raw_array(npy(np.ones(3, np.float32)) + b"xx"),
    "pickled object array": raw_array(
        npy(np.array([object(), 1, "x"], dtype=object)), dtype="object"
    ),
    "pickle disguised as float32": raw_array(pickle.dumps([1.0, 2.0, 3.0])),
    "header lies about shape": raw_array(npy(np.ones(4, np.float32))),
    "header lies about dtype": raw_array(npy(np.ones(3, np.float64))),
    "complex dtype": raw_array(npy(np.ones(3, np.complex64)), dtype="complex64"),
    "wrong declared shape": raw_array(npy(np.ones(4, np.float32)), shape=(4,)),
    "nan": from_numpy({"b": np.array([np.nan, 0, 0], np.float32)})["b"],
    "inf": from_numpy({"b": np.array([np.inf, 0, 0], np.float32)})["b"],
    "huge": from_numpy({"b": np.array([3e38, 3e38, 0], np.float32)})["b"],
    "other stype": Array(dtype="float32", shape=(3,), stype="torch.Tensor", data=b"\x00" * 12),
}

HOSTILE_REPLIES = {
    **{f"array: {k}": with_b(v) for k, v in HOSTILE_ARRAYS.items()},
    "num-examples 1e30": with_b(from_numpy(HONEST)["b"], 1e30),
    "num-examples 0": with_b(from_numpy(HONEST)["b"], 0),
    "num-examples -5": with_b(from_numpy(HONEST)["b"], -5),
    "num-examples nan": with_b(from_numpy(HONEST)["b"], float("nan")),
    "num-examples list": with_b(from_numpy(HONEST)["b"], [1, 2]),
    "no arrays": RecordDict({"metrics": MetricRecord({"num-examples": 10})}),
    "two array records": RecordDict(
        {
            "arrays": from_numpy(HONEST),
            "x": from_numpy(HONEST),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    ),
    "no metrics": RecordDict({"arrays": from_numpy(HONEST)}),
    "extra key": RecordDict(
        {
            "arrays": from_numpy({**HONEST, "evil": np.ones(1, np.float32)}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    ),
    "missing key": RecordDict(
        {"arrays": from_numpy({"w": HONEST["w"]}), "metrics": MetricRecord({"num-examples": 1})}
    ),
    "metric 1e300": RecordDict(
        {
            "arrays": from_numpy(HONEST),
            "metrics": MetricRecord({"num-examples": 1, "train-loss": 1e300}),
        }
    ),
    "metric list": RecordDict(
        {"arrays": from_numpy(HONEST), "metrics": MetricRecord({"num-examples": 1, "x": [1.0] * 5})}
    ),
    "too many metrics": RecordDict(
        {
            "arrays": from_numpy(HONEST),
            "metrics": MetricRecord({"num-examples": 1, **{f"m{i}": 1 for i in range(100)}}),
        }
    ),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_hostile_train_reply_is_rejected_and_the_round_goes_on(name):
    s = strategy(name)
    replies = [reply(for_strategy(s, c), i + 2) for i, c in enumerate(HOSTILE_REPLIES.values())]
    replies.append(
        reply(RecordDict(), 99).__class__(Error(code=1, reason="boom"), reply_to=instruction(99))
    )
    outcome = s.fold_train(1, [*replies, *honest_replies(s)])
    new, metrics = outcome.arrays, outcome.metrics
    assert new is not None
    assert metrics["sites-accepted"] == 5
    assert metrics["sites-rejected"] == len(HOSTILE_REPLIES) + 1
    reasons = [r.reason for r in outcome.report.sites if not r.accepted]
    assert all(reasons), reasons
    # Every rule but centered clipping (which moves at most tau per iteration) returns the
    # identical honest update, applied with eta = 1.
    if s.eta == 1.0 and name != "centered_clip":
        np.testing.assert_array_equal(to_numpy(new)["b"], HONEST["b"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300),
    dtype=st.sampled_from(["float32", "float64", "int64", "object", "<f4", "V8", "S3", "bogus"]),
    shape=st.lists(st.integers(-2, 6), max_size=4),
    prefix=st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00"]),
    n=st.one_of(st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True)),
    name=st.sampled_from(sorted(STRATEGIES)),
)
def test_fuzzed_payloads_never_escape_as_exceptions(data, dtype, shape, prefix, n, name):
    s = strategy(name)
    bad = raw_array(prefix + data, dtype=dtype, shape=shape)
    bad_reply = reply(for_strategy(s, with_b(bad, n)), 2)
    new, metrics = s.aggregate_train(1, [bad_reply, *honest_replies(s)])
    assert metrics["sites-rejected"] + metrics["sites-accepted"] == 6
    assert metrics["sites-accepted"] >= 5 and new is not None


def evaluate_reply(metrics: dict, node: int) -> Message:
    return reply(RecordDict({"metrics": MetricRecord(metrics)}), node, MessageType.EVALUATE)


HOSTILE_EVALUATIONS = {
    "confusion wrong length": {"num-examples": 4, "confusion": [1, 1, 1, 1]},
    "confusion not square": {"num-examples": 3, "confusion": [1, 1, 1]},
    "confusion negative": {"num-examples": 1, "confusion": [2, -1, 0, 0, 0, 0, 0, 0, 0]},
    "confusion sum lies": {"num-examples": 1, "confusion": [5, 0, 0, 0, 0, 0, 0, 0, 0]},
    "confusion floats": {"num-examples": 9, "confusion": [1.0] * 9},
    "no examples": {"eval-loss": 0.1},
    "nan loss": {"num-examples": 2, "eval-loss": float("nan")},
    "examples 1e30": {"num-examples": 1e30, "eval-loss": 0.1},
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_hostile_evaluate_replies_are_rejected_and_pooling_uses_the_honest_one(name):
    s = strategy(name)
    good = {"num-examples": 3, "eval-loss": 0.5, "confusion": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    replies = [evaluate_reply(m, i + 2) for i, m in enumerate(HOSTILE_EVALUATIONS.values())]
    outcome = s.fold_evaluate(1, [*replies, evaluate_reply(good, 1)])
    out = outcome.metrics
    assert out is not None and out["num-examples"] == 3 and out["accuracy"] == 1.0
    assert outcome.report.rejected == len(HOSTILE_EVALUATIONS)


@settings(max_examples=60, deadline=None)
@given(
    values=st.one_of(
        st.lists(st.integers(-5, 10**6), max_size=20), st.lists(st.floats(), max_size=20)
    ),
    n=st.one_of(st.integers(-1, 100), st.floats()),
)
def test_fuzzed_evaluations_never_escape(values, n):
    s = strategy("fedavg")
    metrics = {"num-examples": n, "confusion": values} if values else {"num-examples": n}
    out = s.aggregate_evaluate(1, [evaluate_reply(metrics, 2)])
    assert out is None or out["num-examples"] > 0
