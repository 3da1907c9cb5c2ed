"""LoRA mode: the frozen base weights reach a site once; later messages carry only the
trainable tensors (``compression.lora_base_once``).

The server puts the hash of the base (:func:`orchestrator.contract.compression.base_hash`) in
every message's config (``base-hash``) and sends the full model to a site that has not confirmed
holding that base (a site confirms with ``base-hash`` in its replies' ``site`` record). A site
keeps the base it received: in Flower's ``Context.state`` (simulation, and a real site's
SuperNode while it runs) and, at a real site with a ``state-dir``, on disk (survives restarts).
A site that gets only the trainable tensors but holds no base with that hash (restarted without
its state, a new run) fails the message with a clear error; the server then sends it the full
model at its next message.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context

from clients.site_state import STATE_DIR_KEY
from orchestrator.contract.arrays import Arrays, array_view, from_numpy
from orchestrator.contract.compression import base_hash

log = logging.getLogger(__name__)
STATE_KEY = "fedray-lora-base"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class MissingBase(RuntimeError):
    """Only trainable tensors arrived, and this site holds no base with the server's hash."""


def _disk_path(node_config: Mapping[str, Any], digest: str) -> Path | None:
    if "data-path" not in node_config or not node_config.get(STATE_DIR_KEY):
        return None  # only a real site with a state dir keeps the base on disk
    return (
        Path(str(node_config[STATE_DIR_KEY])).expanduser() / "lora-base" / f"{digest}.safetensors"
    )


def _save(context: Context, node_config: Mapping[str, Any], digest: str, base: Arrays) -> None:
    context.state[STATE_KEY] = from_numpy(base)
    path = _disk_path(node_config, digest)
    if path is None or path.exists():
        return
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in base.items()}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for old in path.parent.glob("*.safetensors"):  # one base per site is enough
        if old != path:
            old.unlink(missing_ok=True)


def _load(context: Context, node_config: Mapping[str, Any], digest: str) -> Arrays | None:
    """The cached base whose contents hash to ``digest`` (re-hashed: a cache is untrusted)."""
    candidates: list[Arrays] = []
    record = context.state.get(STATE_KEY)
    if isinstance(record, ArrayRecord):
        candidates.append({k: array_view(v) for k, v in record.items()})
    path = _disk_path(node_config, digest)
    if path is not None and path.exists():
        from safetensors.numpy import load_file

        try:
            candidates.append(load_file(str(path)))
        except Exception as e:  # a corrupt file: ignore it, the server resends the base
            log.warning("cached LoRA base %s is unreadable: %s", path, e)
    return next((c for c in candidates if base_hash(c) == digest), None)


def with_base(
    received: Arrays,
    digest: str,
    all_keys: Collection[str],
    trainable: Collection[str],
    context: Context,
    node_config: Mapping[str, Any],
) -> Arrays:
    """The full set of model arrays: ``received`` plus the cached base when only the trainable
    tensors came (:class:`MissingBase` if there is none); a full model's base is cached."""
    if not digest:
        return received
    if not _HEX64.fullmatch(digest):  # it names a file at a real site: never a path
        raise ValueError(f"base-hash {digest[:70]!r} from the server is not a SHA-256 hex digest")
    base_keys = set(all_keys) - set(trainable)
    if set(received) == set(all_keys):
        base = {k: received[k] for k in base_keys}
        if base_hash(base) != digest:
            raise ValueError("the base weights received do not match the server's base-hash")
        _save(context, node_config, digest, base)
        return received
    cached = _load(context, node_config, digest)
    if cached is None:
        raise MissingBase(
            f"this site holds no LoRA base with hash {digest[:12]} (restarted without its state "
            "or a new run); the server sends the full model with its next message"
        )
    return {**cached, **received}
