"""Moving arrays between Flower records and numpy without extra copies."""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord


def array_view(arr: Array) -> np.ndarray:
    """A read-only numpy view of an ``Array``'s bytes (no copy).

    ``Array.numpy()`` runs ``np.load`` on a BytesIO, which copies the payload; aggregation reads
    every byte once, so a copy would double its memory traffic. The payload is a ``.npy`` file:
    parse the header, then view the rest.
    """
    data = arr.data
    if not isinstance(data, bytes | bytearray | memoryview):
        return arr.numpy()
    buf = BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            return arr.numpy()
    except ValueError:
        return arr.numpy()
    if dtype.hasobject or fortran:
        return arr.numpy()
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell()).reshape(shape)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Views of every array in a record, by key (order kept)."""
    return {k: array_view(v) for k, v in record.items()}


def to_array(a: np.ndarray) -> Array:
    """An ``Array`` with the same ``.npy`` payload as ``Array(a)``, built with one copy.

    ``Array(a)`` runs ``np.save`` into a growing BytesIO and then copies it out; for a 100 MB
    model that costs several times the aggregation itself.
    """
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        return Array(a)
    header = BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(a))
    data = b"".join([header.getvalue(), memoryview(a.reshape(-1)).cast("B")])
    return Array(dtype=str(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray", data=data)


def from_numpy(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` (serialized, so later edits do not leak into it)."""
    return ArrayRecord({k: to_array(v) for k, v in arrays.items()})


def nbytes(record: ArrayRecord) -> int:
    """Payload bytes of a record (what travels over the wire, give or take headers)."""
    return sum(len(a.data) for a in record.values())
