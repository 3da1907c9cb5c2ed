"""ReplyStore: one round's updates on disk, read back in (K, chunk) blocks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from strategies.reply_store import ReplyStore


def _update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((5, 7), dtype=np.float32),
        "b": rng.standard_normal(3).astype(np.float64),
        "s": np.array(rng.standard_normal(), dtype=np.float32),  # 0-d
    }


def _reassemble(store: ReplyStore, key: str, chunk: int, rows=None) -> np.ndarray:
    n = len(store) if rows is None else len(rows)
    size = int(np.prod(store.shapes[key], dtype=np.int64))
    out = np.full((n, size), np.nan, dtype=store.dtypes[key])
    for sl, block in store.chunks(key, chunk, rows):
        assert block.shape == (n, sl.stop - sl.start)
        out[:, sl] = block
    return out.reshape((n, *store.shapes[key]))


@pytest.mark.parametrize("chunk", [1, 4, 35, 1000])
def test_round_trip_every_chunk_size(tmp_path, chunk):
    updates = [_update(i) for i in range(3)]
    with ReplyStore(tmp_path) as store:
        for i, u in enumerate(updates):
            store.add(f"site-{i}", u, 10.0 * (i + 1))
        assert len(store) == 3
        assert store.sites == ["site-0", "site-1", "site-2"]
        np.testing.assert_array_equal(store.weights, [10.0, 20.0, 30.0])
        assert store.keys == ["w", "b", "s"]
        assert store.shapes == {"w": (5, 7), "b": (3,), "s": ()}
        assert store.dtypes == {"w": np.float32, "b": np.float64, "s": np.float32}
        for key in store.keys:
            got = _reassemble(store, key, chunk)
            np.testing.assert_array_equal(got, np.stack([u[key] for u in updates]))
        # a subset of rows, in the order asked for
        got = _reassemble(store, "w", chunk, rows=[2, 0])
        np.testing.assert_array_equal(got, np.stack([updates[2]["w"], updates[0]["w"]]))
        expected_norms = [
            np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in u.values()))
            for u in updates
        ]
        np.testing.assert_allclose(store.norms, expected_norms, rtol=1e-12)


def test_non_contiguous_arrays_are_stored_in_c_order(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    fortran = np.asfortranarray(base)
    transposed = base.T  # a view, not C-contiguous
    strided = np.arange(40, dtype=np.float32)[::4]
    with ReplyStore(tmp_path) as store:
        store.add("a", {"f": fortran, "t": transposed, "s": strided}, 1)
        np.testing.assert_array_equal(_reassemble(store, "f", 5)[0], base)
        np.testing.assert_array_equal(_reassemble(store, "t", 5)[0], base.T)
        np.testing.assert_array_equal(_reassemble(store, "s", 3)[0], strided)


def test_other_keys_shapes_or_dtypes_are_rejected_and_nothing_is_stored(tmp_path):
    with ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        bad = [
            {k: v for k, v in _update(1).items() if k != "b"},  # missing key
            {**_update(1), "extra": np.zeros(2, np.float32)},  # extra key
            dict(reversed(list(_update(1).items()))),  # same keys, other order
            {**_update(1), "w": np.zeros((7, 5), np.float32)},  # other shape
            {**_update(1), "w": np.zeros((5, 7), np.float64)},  # other dtype
            {**_update(1), "w": [[0.0] * 7] * 5},  # not an ndarray
        ]
        for i, u in enumerate(bad):
            with pytest.raises(ValueError, match="site 'x"):
                store.add(f"x{i}", u, 1)
        assert len(store) == 1
        assert sorted(os.listdir(store.path)) == ["000000.bin"]


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_bad_weight_rejected(tmp_path, weight):
    with ReplyStore(tmp_path) as store, pytest.raises(ValueError, match="weight"):
        store.add("a", _update(0), weight)


def test_first_reply_must_be_floating_point_and_non_empty(tmp_path):
    with ReplyStore(tmp_path) as store:
        with pytest.raises(ValueError, match="floating-point"):
            store.add("a", {"i": np.arange(3)}, 1)
        with pytest.raises(ValueError, match="empty update"):
            store.add("a", {}, 1)
        assert len(store) == 0


def test_a_site_replies_once(tmp_path):
    with ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        with pytest.raises(ValueError, match="already has a reply"):
            store.add("a", _update(1), 1)


def test_site_names_never_reach_file_names(tmp_path):
    with ReplyStore(tmp_path / "round") as store:
        store.add("../../evil", _update(0), 1)
        store.add("/etc/passwd", _update(1), 1)
        assert sorted(os.listdir(store.path)) == ["000000.bin", "000001.bin"]
        assert store.path.parent == tmp_path / "round"
    assert not (tmp_path / "evil").exists()


def test_close_removes_the_files_and_is_idempotent(tmp_path):
    store = ReplyStore(tmp_path)
    store.add("a", _update(0), 1)
    path = store.path
    assert path.is_dir() and path.parent == tmp_path
    store.close()
    assert not path.exists()
    assert tmp_path.exists()  # the caller's directory stays
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.add("b", _update(1), 1)


def test_context_manager_removes_files_on_error(tmp_path):
    with pytest.raises(RuntimeError), ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        path = store.path
        raise RuntimeError("round failed")
    assert not path.exists()


def test_garbage_collected_store_removes_its_files(tmp_path):
    store = ReplyStore(tmp_path)
    store.add("a", _update(0), 1)
    path = store.path
    del store
    assert not path.exists()


def test_two_stores_in_one_directory_do_not_collide(tmp_path):
    with ReplyStore(tmp_path) as s1, ReplyStore(tmp_path) as s2:
        s1.add("a", _update(0), 1)
        s2.add("a", _update(1), 1)
        assert s1.path != s2.path
        np.testing.assert_array_equal(_reassemble(s1, "b", 2)[0], _update(0)["b"])
        np.testing.assert_array_equal(_reassemble(s2, "b", 2)[0], _update(1)["b"])


class _FailsWhileWritten(Mapping):
    """An update whose tensor "b" raises the second time it is read: the store reads each tensor
    once to check it, then again to write it, after "w" is already in the file. It records what
    the store's directory held at that moment."""

    def __init__(self, store: ReplyStore, data: dict[str, np.ndarray]) -> None:
        self.store = store
        self.data = data
        self.reads = 0
        self.seen: list[str] = []

    def __getitem__(self, key: str) -> np.ndarray:
        if key == "b":
            self.reads += 1
            if self.reads == 2:
                self.seen = sorted(os.listdir(self.store.path))
                raise OSError("disk full")
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_write_is_atomic_no_partial_file_is_visible(tmp_path):
    with ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        failing = _FailsWhileWritten(store, _update(1))
        with pytest.raises(OSError, match="disk full"):
            store.add("b", failing, 1)
        # While the reply was half written, it existed only under a temporary name.
        assert failing.seen == [".000001.bin.tmp", "000000.bin"]
        # Afterwards the temporary file is gone and the store is as before.
        assert sorted(os.listdir(store.path)) == ["000000.bin"]
        assert len(store) == 1 and store.sites == ["a"]
        # The next reply takes the free slot.
        store.add("c", _update(2), 1)
        np.testing.assert_array_equal(_reassemble(store, "b", 2)[1], _update(2)["b"])


def test_truncated_file_is_a_read_error_not_garbage(tmp_path):
    with ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        f = store.path / "000000.bin"
        f.write_bytes(f.read_bytes()[:-4])
        with pytest.raises(OSError, match="short read"):
            list(store.chunks("s", 1))


def test_chunks_argument_checks(tmp_path):
    with ReplyStore(tmp_path) as store:
        store.add("a", _update(0), 1)
        with pytest.raises(KeyError, match="nope"):
            list(store.chunks("nope", 4))
        with pytest.raises(ValueError, match="chunk_elems"):
            list(store.chunks("w", 0))
        assert list(store.chunks("w", 4, rows=[])) == []


def test_blocks_reuse_one_buffer(tmp_path):
    """Documented: the block is reused, so a caller must copy what it keeps."""
    with ReplyStore(tmp_path) as store:
        store.add("a", {"x": np.arange(8, dtype=np.float32)}, 1)
        blocks = [b for _, b in store.chunks("x", 4)]
        assert np.shares_memory(blocks[0], blocks[1])


def test_sort_by_site_makes_rows_independent_of_arrival_order(tmp_path):
    updates = {name: _update(i) for i, name in enumerate(["c", "a", "b"])}
    with ReplyStore(tmp_path) as s1, ReplyStore(tmp_path) as s2:
        for name in ["c", "a", "b"]:
            s1.add(name, updates[name], ord(name))
        for name in ["b", "c", "a"]:
            s2.add(name, updates[name], ord(name))
        s1.sort_by_site()
        s2.sort_by_site()
        for s in (s1, s2):
            assert s.sites == ["a", "b", "c"]
            np.testing.assert_array_equal(s.weights, [ord("a"), ord("b"), ord("c")])
            want = np.stack([updates[n]["w"] for n in "abc"])
            np.testing.assert_array_equal(_reassemble(s, "w", 6), want)
            np.testing.assert_allclose(
                s.norms,
                [
                    np.sqrt(
                        sum(np.sum(np.square(a, dtype=np.float64)) for a in updates[n].values())
                    )
                    for n in "abc"
                ],
            )
