"""Moving arrays between Flower records and numpy without extra copies."""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord

ALLOWED_DTYPES = frozenset(
    np.dtype(t)
    for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
)
"""Element types a tensor may have on the wire (bfloat16 travels as float32)."""
MAX_DIMS = 8

Arrays = dict[str, np.ndarray]
"""Tensors by name: a model's state, one update, a running sum (the one definition; every side
imports it from here)."""


def array_view(arr: Array) -> np.ndarray:
    """A read-only numpy view of an ``Array``'s ``.npy`` payload (no copy), or ``ValueError``.

    Payloads come from other machines, so this parses strictly instead of calling
    ``Array.numpy()``: the ``.npy`` magic and header must be well-formed, the dtype one of
    :data:`ALLOWED_DTYPES` (never an object array: nothing is unpickled), the shape at most
    :data:`MAX_DIMS` non-negative dimensions, the byte count exactly header + elements, and the
    ``Array``'s declared dtype/shape must agree with the header. It is also faster: ``numpy()``
    copies the payload through ``np.load``.
    """
    data = arr.data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"array payload is {type(data).__name__}, not bytes")
    if arr.stype != "numpy.ndarray":
        raise ValueError(f"array serialization {arr.stype!r} is not 'numpy.ndarray'")
    buf = BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f".npy version {version} is not supported")
    except ValueError:
        raise
    except Exception as e:  # numpy's header parser raises several types on garbage
        raise ValueError(f"malformed .npy header: {type(e).__name__}: {e}") from e
    dtype = np.dtype(dtype)
    if dtype not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {dtype} is not allowed (allowed: float/int/bool numeric types)")
    if len(shape) > MAX_DIMS or any(not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"shape {shape} is not a valid tensor shape")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = buf.tell() + count * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"payload is {len(data)} bytes, header says {expected}")
    if str(dtype) != arr.dtype or tuple(shape) != tuple(arr.shape):
        raise ValueError(
            f"declared {arr.dtype}{list(arr.shape)} disagrees with the payload's {dtype}{list(shape)}"
        )
    out = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return out.reshape(shape, order="F" if fortran else "C")


def to_numpy(record: ArrayRecord) -> Arrays:
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
