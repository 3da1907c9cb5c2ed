"""The warm site worker (clients/site_worker.py) and its wire (clients/worker_wire.py): the
decoder refuses anything malformed with a ``WireError``, and a worker answers a real train
message exactly as the ClientApp process would, reused across messages, gone with its owner."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from clients import site_worker
from clients.worker_wire import (
    HEADER_MAX,
    PROTOCOL,
    Reply,
    Request,
    WireError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    recv_parts,
    send_parts,
)
from orchestrator.processes.site import SITE_WORKER_ENV


def request(**changes: object) -> Request:
    content = RecordDict({"config": ConfigRecord({"a": 1, "b": "x"})})
    fields = dict(
        handler="train",
        run_id=7,
        node_id=3,
        message_type="train",
        node_config={"data-path": "/d.csv", "num-threads": 1},
        run_config={},
        content=content,
        state=RecordDict({"s": ConfigRecord({"k": 2.5})}),
    )
    return Request(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_server_side_names_the_same_switch() -> None:
    assert SITE_WORKER_ENV == site_worker.ENV_FLAG


def test_request_and_reply_round_trip() -> None:
    req = request(content=RecordDict({"arrays": ArrayRecord({"w": Array(np.arange(5.0))})}))
    back = decode_request(encode_request(req))
    assert (back.handler, back.run_id, back.node_id) == ("train", 7, 3)
    assert back.node_config == req.node_config
    np.testing.assert_array_equal(back.content["arrays"]["w"].numpy(), np.arange(5.0))
    assert back.state["s"]["k"] == 2.5
    ok = decode_reply(encode_reply(Reply(req.content, req.state)))
    assert ok.error is None and ok.content is not None and "arrays" in ok.content
    failed = decode_reply(encode_reply(Reply(None, None, "ValueError: boom")))
    assert failed.error == "ValueError: boom" and failed.content is None


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"protocol": PROTOCOL + 1}).encode(), "protocol"),
        (json.dumps({"protocol": PROTOCOL, "handler": "rm -rf /"}).encode(), "must be int"),
    ],
)
def test_bad_headers_are_refused(header: bytes, why: str) -> None:
    parts = encode_request(request())
    with pytest.raises(WireError, match=why):
        decode_request([header, *parts[1:]])


def test_unknown_handler_bool_ids_and_non_scalar_config_are_refused() -> None:
    def head(**changes: object) -> list[bytes]:
        parts = encode_request(request())
        h = {**json.loads(parts[0]), **changes}
        return [json.dumps(h).encode(), *parts[1:]]

    with pytest.raises(WireError, match="unknown handler"):
        decode_request(head(handler="__import__"))
    with pytest.raises(WireError, match="run_id"):
        decode_request(head(run_id=True))
    with pytest.raises(WireError, match="node_config"):
        decode_request(head(node_config={"data-path": ["a", "b"]}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=512))
def test_any_bytes_decode_or_raise_wire_error(head: bytes, body: bytes) -> None:
    for parts in ([head, body, body], [encode_request(request())[0], body, body]):
        with contextlib.suppress(WireError):
            decode_request(parts)
    with contextlib.suppress(WireError):
        decode_reply([head, body, body])


@pytest.mark.parametrize(
    "bad",
    [
        {"s": float("nan"), "cpu-s": 1.0},
        {"s": -1.0, "cpu-s": 1.0},
        {"s": True, "cpu-s": 1.0},
        {"s": 1.0},
        [1.0, 2.0],
        {"s": 1e9, "cpu-s": 1.0},
    ],
)
def test_a_bad_overhead_is_refused(bad: object) -> None:
    parts = encode_request(request())
    head = {**json.loads(parts[0]), "overhead": bad}
    with pytest.raises(WireError, match="overhead"):
        decode_request([json.dumps(head).encode(), *parts[1:]])


def test_overhead_is_measured_only_in_a_per_message_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert site_worker.message_overhead() is None  # pytest is not Flower's ClientApp process
    monkeypatch.setattr(sys, "argv", ["/venv/bin/flwr-clientapp", "--token", "x"])
    cost = site_worker.message_overhead()
    assert cost is not None and set(cost) == {"s", "cpu-s"}
    assert cost["cpu-s"] > 0 and 0 <= cost["s"] < 24 * 3600
    req = request(overhead=cost)
    assert decode_request(encode_request(req)).overhead == cost


def test_message_cost_metrics_are_left_out_under_local_dp() -> None:
    from clients.site_handlers import timing_metrics

    task = type("T", (), {"privacy": type("P", (), {"mode": "off"})()})()
    cost = {"s": 2.0, "cpu-s": 0.5}
    assert timing_metrics(cost, task, "eval-") == {  # type: ignore[arg-type]
        "eval-overhead-s": 2.0,
        "eval-overhead-cpu-s": 0.5,
    }
    steps = {"setup": 0.123456, "train": 2.5}
    assert timing_metrics(cost, task, "", steps) == {  # type: ignore[arg-type]
        "overhead-s": 2.0,
        "overhead-cpu-s": 0.5,
        "setup-s": 0.1235,
        "train-s": 2.5,
    }
    task.privacy.mode = "local"
    assert timing_metrics(cost, task, "", steps) == {}  # type: ignore[arg-type]
    assert timing_metrics(None, task, "") == {}  # type: ignore[arg-type]


def test_an_oversized_part_is_refused_before_it_is_read() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">Q", HEADER_MAX + 1))
        with pytest.raises(WireError, match="announces"):
            recv_parts(b, 3)


def test_a_peer_that_closes_mid_frame_is_a_wire_error() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(struct.pack(">Q", 100) + b"short")
        a.close()
        with pytest.raises(WireError, match="closed"):
            recv_parts(b, 1)


def test_parts_survive_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_parts(a, [b"head", b"", b"x" * 100_000])
        assert recv_parts(b, 3) == [b"head", b"", b"x" * 100_000]


# ---- a real worker -----------------------------------------------------------------------------


@pytest.mark.integration
def test_a_worker_answers_as_the_clientapp_does_and_leaves_with_its_owner(
    cache_dir: Path, tmp_path: Path
) -> None:
    from orchestrator.contract.arrays import from_numpy, to_numpy
    from orchestrator.contract.model import model_state
    from orchestrator.federated.setup import prepare
    from tests.unit.test_federated_rounds import job, train_message

    setup = prepare(job(cache_dir))
    state = from_numpy({k: v.numpy() for k, v in model_state(setup.model).items()})
    nodes = {"partition-id": 0, "num-partitions": 4, "num-threads": 1}

    def context() -> Context:
        return Context(run_id=1, node_id=1, node_config=nodes, state=RecordDict(), run_config={})

    local = site_worker.handlers()["train"](train_message(setup, state), context())
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        path = site_worker.socket_path(owner.pid)
        ctx = context()
        ctx.state["kept"] = ConfigRecord({"k": 1})
        t0 = time.monotonic()
        with pytest.MonkeyPatch.context() as mp:  # as in Flower's per-message process
            mp.setattr(sys, "argv", ["flwr-clientapp"])
            first = site_worker.relay("train", train_message(setup, state), ctx, owner=owner.pid)
        t_first = time.monotonic() - t0
        assert first is not None and path.exists()
        worker_pid = int(path.with_suffix(".log").read_text().split("site worker ")[1].split()[0])
        assert ctx.state["kept"]["k"] == 1  # the state went there and came back
        want, got = to_numpy(local.content["arrays"]), to_numpy(first.content["arrays"])
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        # The same metrics, plus what the message cost before the worker ran it and the time
        # of each of the handler's steps.
        relayed = dict(first.content["metrics"])
        assert relayed.pop("overhead-s") >= 0 and relayed.pop("overhead-cpu-s") > 0
        steps = {k: relayed.pop(f"{k}-s") for k in ("setup", "tokenize", "train")}
        assert all(v >= 0 for v in steps.values()) and steps["train"] > 0, steps
        assert relayed == dict(local.content["metrics"])

        t0 = time.monotonic()
        second = site_worker.relay("train", train_message(setup, state), context(), owner.pid)
        assert second is not None
        assert time.monotonic() - t0 < t_first  # the imports were paid once

        broken = train_message(setup, state)
        broken.content["config"] = ConfigRecord({"server-round": 1})
        with pytest.raises(site_worker.SiteWorkerError, match=r"(?s)handler failed.*lacks key"):
            site_worker.relay("train", broken, context(), owner.pid)
    finally:
        owner.kill()
        owner.wait()
    worker = psutil.Process(worker_pid)
    deadline = time.monotonic() + 15
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker outlived its owner"
        time.sleep(0.1)
    assert not path.exists() and not path.with_suffix(".log").exists()


def test_a_socket_directory_others_can_open_is_refused_and_the_message_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="fw", dir="/tmp"))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(short))
    shared = short / f"fedray-site-worker-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="0700"):
        site_worker.socket_dir()
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    msg = type("M", (), {"metadata": None, "content": RecordDict()})()
    assert site_worker.relay("train", msg, ctx, owner=os.getpid()) is None  # type: ignore[arg-type]
    assert "handling this message in-process" in caplog.text
    assert not list(shared.iterdir())  # nothing started, nothing written
    shutil.rmtree(short)


@pytest.mark.parametrize("warm", [True, False])
def test_a_site_turns_the_worker_on_unless_told_not_to(tmp_path: Path, warm: bool) -> None:
    from orchestrator.processes.site import SiteOptions, site_process

    data = tmp_path / "d.csv"
    data.write_text("text,label\nhi,positive\n")
    opts = SiteOptions(server="127.0.0.1:9092", data=data, insecure=True, warm_worker=warm)
    proc = site_process(opts, tmp_path / "s.log", tmp_path / "state")
    assert proc.env is not None and proc.env[SITE_WORKER_ENV] == ("1" if warm else "0")
