"""The wire between a site's ClientApp process and its warm worker (clients/site_worker.py).

A request or reply is a few length-prefixed parts: a JSON header, then Flower ``RecordDict``s
in Flower's own protobuf encoding (the message content; the site's context state). Both ends
are processes of the same user on one machine, but the decoder still trusts nothing: every
length is bounded before anything is read, the header must be a JSON object of known keys and
types, and protobuf parsing cannot run code.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

PROTOCOL = 1
"""Bumped whenever the header or the parts change; a worker refuses any other version."""
HEADER_MAX = 1 << 20
"""A header is a few hundred bytes of JSON; 1 MiB bounds a hostile one."""
PART_MAX = int(os.environ.get("FEDRAY_SITE_WORKER_MAX_BYTES", str(16 << 30)))
"""Largest content part (the model's arrays travel here): 16 GiB unless set."""
HANDLERS = ("train", "evaluate", "secagg_share", "secagg_mask", "secagg_unmask")
"""What a worker may be asked to run; anything else is refused."""
_LEN = struct.Struct(">Q")


class WireError(ValueError):
    """A malformed, oversized or truncated frame, or a header that breaks the protocol."""


@dataclass(frozen=True)
class Request:
    handler: str
    run_id: int
    node_id: int
    message_type: str
    node_config: dict[str, Any]
    run_config: dict[str, Any]
    content: RecordDict
    state: RecordDict
    overhead: dict[str, float] | None = None
    """What the message cost before it reached the worker (``s``, ``cpu-s``), to report."""


@dataclass(frozen=True)
class Reply:
    content: RecordDict | None
    state: RecordDict | None
    error: str | None = None


def send_parts(sock: socket.socket, parts: Sequence[bytes]) -> None:
    for part in parts:
        sock.sendall(_LEN.pack(len(part)))
        sock.sendall(part)


def recv_parts(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` parts; the first (the header) at most ``HEADER_MAX`` bytes, the rest at most
    ``PART_MAX``. A peer that closes mid-frame is a ``WireError``."""
    parts = []
    for i in range(count):
        (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        limit = HEADER_MAX if i == 0 else PART_MAX
        if n > limit:
            raise WireError(f"part {i} announces {n} bytes; at most {limit} are accepted")
        parts.append(_recv_exact(sock, n))
    return parts


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 24))
        if k == 0:
            raise WireError(f"the peer closed the connection after {got} of {n} bytes")
        got += k
    return bytes(buf)


def encode_records(rd: RecordDict) -> bytes:
    return recorddict_to_proto(rd).SerializeToString()


def decode_records(data: bytes, what: str) -> RecordDict:
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except Exception as e:  # protobuf's DecodeError, or a record Flower's types refuse
        raise WireError(f"{what}: not a Flower RecordDict ({type(e).__name__}: {e})") from e


def _header(data: bytes, required: Mapping[str, type]) -> dict[str, Any]:
    try:
        head = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from e
    if not isinstance(head, dict):
        raise WireError("header is not a JSON object")
    if head.get("protocol") != PROTOCOL:
        raise WireError(f"protocol {head.get('protocol')!r}; this side speaks {PROTOCOL}")
    for key, kind in required.items():
        value = head.get(key)
        # bool is an int to Python, not to this protocol
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise WireError(f"header field {key!r} must be {kind.__name__}")
    return head


_SCALARS = (str, int, float, bool)


def _scalars(d: dict[str, Any], what: str) -> dict[str, Any]:
    """Node and run config values are Flower scalars; anything else is refused."""
    if not all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in d.items()):
        raise WireError(f"{what} must map names to strings, numbers or booleans")
    return d


def encode_request(req: Request) -> list[bytes]:
    head = {
        "protocol": PROTOCOL,
        "handler": req.handler,
        "run_id": req.run_id,
        "node_id": req.node_id,
        "message_type": req.message_type,
        "node_config": req.node_config,
        "run_config": req.run_config,
        "overhead": req.overhead,
    }
    return [json.dumps(head).encode(), encode_records(req.content), encode_records(req.state)]


def decode_request(parts: Sequence[bytes]) -> Request:
    fields = {"handler": str, "run_id": int, "node_id": int, "message_type": str}
    head = _header(parts[0], {**fields, "node_config": dict, "run_config": dict})
    if head["handler"] not in HANDLERS:
        raise WireError(f"unknown handler {head['handler']!r}; known: {', '.join(HANDLERS)}")
    return Request(
        handler=head["handler"],
        run_id=head["run_id"],
        node_id=head["node_id"],
        message_type=head["message_type"],
        node_config=_scalars(head["node_config"], "node_config"),
        run_config=_scalars(head["run_config"], "run_config"),
        content=decode_records(parts[1], "content"),
        state=decode_records(parts[2], "state"),
        overhead=_overhead(head.get("overhead")),
    )


OVERHEAD_MAX_S = 1e6


def _overhead(value: object) -> dict[str, float] | None:
    """``None``, or ``{"s": wall seconds, "cpu-s": CPU seconds}``, each finite in [0, 1e6]."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"s", "cpu-s"}:
        raise WireError("overhead must be null or an object with keys 's' and 'cpu-s'")
    for k, v in value.items():
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        if not ok or not 0 <= v <= OVERHEAD_MAX_S:  # NaN fails this too
            raise WireError(f"overhead {k!r} must be a number of seconds in [0, 1e6]")
    return {k: float(v) for k, v in value.items()}


def encode_reply(reply: Reply) -> list[bytes]:
    head = {"protocol": PROTOCOL, "ok": reply.error is None, "error": reply.error or ""}
    if reply.error is not None or reply.content is None or reply.state is None:
        return [json.dumps(head).encode(), b"", b""]
    return [json.dumps(head).encode(), encode_records(reply.content), encode_records(reply.state)]


def decode_reply(parts: Sequence[bytes]) -> Reply:
    head = _header(parts[0], {"ok": bool, "error": str})
    if not head["ok"]:
        return Reply(None, None, head["error"] or "the site worker failed (no reason given)")
    return Reply(decode_records(parts[1], "reply content"), decode_records(parts[2], "state"))


__all__ = [
    "HANDLERS",
    "PROTOCOL",
    "Reply",
    "Request",
    "WireError",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "recv_parts",
    "send_parts",
]
