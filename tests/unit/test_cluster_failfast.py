"""Fail fast on the cluster side: an address where nothing listens and requests no node can meet
are exit-2 errors naming the key, what was asked and what the cluster has (no Ray started)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cluster import (
    NodeCapacity,
    address_endpoint,
    capacity_problem,
    check_reachable,
    worker_slots,
)
from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import ClusterConfig, ScalingConfig
from orchestrator.processes.network import free_port


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head.example:10001", ("head.example", 10001)),
        ("localhost:6380", ("localhost", 6380)),
    ],
)
def test_address_endpoint_forms(address: str, expected: tuple[str, int]):
    assert address_endpoint(address, environ={}) == expected


def test_ray_address_env_wins_and_auto_reads_the_cluster_file(tmp_path: Path):
    # Ray itself lets a non-empty RAY_ADDRESS override ray.init(address=...).
    assert address_endpoint("10.0.0.5:6379", {"RAY_ADDRESS": "1.2.3.4:7"}) == ("1.2.3.4", 7)
    assert address_endpoint("auto", {"RAY_TMPDIR": str(tmp_path)}) is None  # Ray decides
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6399\n")
    assert address_endpoint("auto", {"RAY_TMPDIR": str(tmp_path)}) == ("127.0.0.1", 6399)


def test_malformed_address_names_the_key():
    with pytest.raises(ConfigError) as e:
        address_endpoint("head-node", environ={})
    assert e.value.key == "cluster.address" and "HOST:PORT" in str(e.value)


def test_nothing_listening_fails_in_seconds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        check_reachable(ClusterConfig(address=f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 5
    assert e.value.key == "cluster.address"
    assert f"127.0.0.1:{port}" in str(e.value) and "no Ray cluster answers" in str(e.value)


def test_a_silent_listener_is_bounded_by_connect_timeout(monkeypatch: pytest.MonkeyPatch):
    """Something accepts TCP (a proxy, a load balancer, a wedged process) but never answers:
    the probe gives up after ``cluster.connect_timeout_s`` instead of hanging."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes handshakes; nobody ever reads or writes
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as e:
            check_reachable(ClusterConfig(address=f"127.0.0.1:{port}", connect_timeout_s=0.3))
        assert time.monotonic() - t0 < 3
    assert "no answer within 0.3 s" in str(e.value)


def test_a_server_that_is_not_grpc_is_refused(monkeypatch: pytest.MonkeyPatch):
    """E.g. the dashboard's HTTP port (8265) given where the GCS port (6379) belongs."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        with pytest.raises(ConfigError) as e:
            check_reachable(ClusterConfig(address=f"127.0.0.1:{port}", connect_timeout_s=2))
        t.join(5)
    assert "not a gRPC server" in str(e.value)


def nodes(*shape: tuple[float, float]) -> list[NodeCapacity]:
    return [NodeCapacity(c, g) for c, g in shape]


def test_gpus_asked_where_there_are_none():
    err = capacity_problem(
        ScalingConfig(num_workers=2, use_gpu=True), nodes((8, 0), (8, 0)), "the local Ray"
    )
    assert err is not None and err.key == "scaling.use_gpu"
    msg = str(err)
    assert "asks for 2 GPU(s)" in msg and "8 CPU/0 GPU, 8 CPU/0 GPU" in msg
    assert "scaling.use_gpu=false" in msg and "cluster.autoscaling=true" in msg


def test_more_cpus_than_the_cluster_has():
    err = capacity_problem(ScalingConfig(num_workers=3), nodes((2, 0)), "the Ray cluster at h:1")
    assert err is not None and err.key == "scaling.num_workers"
    assert "asks for 3 CPUs" in str(err) and "the Ray cluster at h:1 has 1 node(s): 2 CPU" in str(
        err
    )


def test_a_worker_cannot_span_nodes():
    # 4 CPUs in total, but no node has the 2 a worker needs.
    scaling = ScalingConfig(num_workers=1, cpus_per_worker=2)
    assert worker_slots(NodeCapacity(1, 0), scaling) == 0
    err = capacity_problem(scaling, nodes((1, 0), (1, 0), (1, 0), (1, 0)), "the local Ray")
    assert err is not None and err.key == "scaling.cpus_per_worker"
    assert "cannot span nodes" in str(err)


def test_requests_that_fit():
    assert (
        capacity_problem(ScalingConfig(num_workers=2), nodes((0, 0), (1, 0), (1, 0)), "x") is None
    )
    gpu = ScalingConfig(num_workers=16, use_gpu=True, cpus_per_worker=4)
    assert capacity_problem(gpu, nodes((4, 0), (48, 8), (48, 8)), "x") is None
    assert capacity_problem(gpu, nodes((48, 8), (16, 8)), "x") is not None  # 8 + 4 slots < 16


def test_pretrain_with_a_dead_address_is_exit_2_before_data_preparation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The probe runs before the corpus is read: with any corpus size it fails in seconds."""
    from orchestrator.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = free_port()
    t0 = time.monotonic()
    rc = main(["pretrain", f"cluster.address=127.0.0.1:{port}", "data.paths=[/nonexistent/corpus]"])
    assert rc == 2 and time.monotonic() - t0 < 30  # mostly imports (torch, ray) on a busy box
    err = capsys.readouterr().err
    assert "cluster.address" in err and f"127.0.0.1:{port}" in err  # not the missing corpus
