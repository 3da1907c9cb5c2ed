"""Tokenization as Ray tasks (the path ``fedray pretrain`` takes on a cluster): the same shard
bytes and manifest as the in-process path, and a failing task is the ConfigError the other
paths give (exit 2), not a RayTaskError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import ConfigError
from orchestrator.data import packing
from orchestrator.data.ray_tasks import RayTasks, cluster_parallelism
from orchestrator.data.sources import demo_path
from orchestrator.data.tokenizer import train_bpe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_tok():
    return train_bpe([demo_path("kjv_pentateuch.txt").read_text()[:200_000]], 400)


def test_ray_tasks_write_the_same_cache_as_the_inline_path(ray_local, tmp_path: Path, demo_tok):
    files = [demo_path("kjv_pentateuch.txt")]
    inline = packing.token_cache(files, "text", demo_tok, "a", tmp_path, 1, batch_chars=200_000)
    # auto parallelism on the connected Ray: its 2 CPUs; 2 forces the Ray executor (1 is inline)
    assert cluster_parallelism(None) == 2
    on_ray = packing.token_cache(
        files, "text", demo_tok, "b", tmp_path, 2, batch_chars=200_000, on_cluster=True
    )
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (inline, on_ray))
    assert len(m1["shards"]) > 4  # more batches than 2 x parallelism: the in-flight bound cycles
    assert m1 == m2
    for s in m1["shards"]:
        assert (inline / s["file"]).read_bytes() == (on_ray / s["file"]).read_bytes()
    # (the inline path equals the in-memory reference packing: tests/unit/test_token_cache.py)


def test_a_failing_task_is_the_config_error_of_the_other_paths(ray_local, tmp_path, demo_tok):
    missing = tmp_path / "gone" / "shard-000000.bin"  # a node where the cache is not mounted
    batch = [("In the beginning", True)]
    with pytest.raises(ConfigError, match=r"cannot write token shard .*gone") as inline:
        packing.encode_shard(batch, 0, "uint16", str(missing), tokenizer=demo_tok)
    with RayTasks(demo_tok) as ex:
        fut = ex.submit(packing.encode_shard, batch, 0, "uint16", str(missing))
        with pytest.raises(ConfigError, match=r"cannot write token shard .*gone") as on_ray:
            fut.result(timeout=120)
    assert on_ray.value.key == inline.value.key == "data.cache_dir"
    # unreadable data files are read (and reported) by the driver on every path
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"other": "x"}\n' * 3)
    with pytest.raises(ConfigError) as e:
        packing.token_cache([bad], "text", demo_tok, "c", tmp_path, 2, on_cluster=True)
    assert e.value.key == "data.text_field"
    assert not list((tmp_path / "tokens").glob(".tmp-c-*"))  # the half-built cache is removed
