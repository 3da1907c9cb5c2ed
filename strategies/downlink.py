"""What the server sends sites: the global model, optionally in fp16, and in LoRA mode the frozen
base only to sites that do not hold it yet (``compression.download``, ``lora_base_once``; see
docs/federated.md, "Saving bandwidth")."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from orchestrator.config.compression import CompressionConfig
from orchestrator.contract.arrays import to_array, to_numpy
from orchestrator.contract.compression import base_hash
from orchestrator.contract.messages import BASE_HASH, SITE
from orchestrator.contract.site_pool import SIM_SITE


def fp16_download(arrays: ArrayRecord) -> ArrayRecord:
    """float32 tensors as float16, the rest unchanged. Sites train from what they received and
    their update is relative to it, so the server's float32 model gets no rounding error."""
    out = ArrayRecord()
    for k, a in to_numpy(arrays).items():
        out[k] = to_array(a.astype(np.float16) if a.dtype == np.float32 else a)
    return out


class Downlink:
    """Builds the messages to sites: the model in ``download`` precision, and with
    ``base_once`` the LoRA base only to sites whose replies confirmed holding it."""

    def __init__(self, download: str = "none", base_once: bool = False) -> None:
        self.download, self.base_once = download, base_once
        self.site_base: dict[int, str] = {}
        """node id -> the hash of the base it holds (learnt from its replies)."""

    def messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        trainable: Collection[str] | None,
        nodes: list[int],
        kind: str,
        keys: tuple[str, str],
        extra: dict[str, ArrayRecord] | None = None,
        site_records: Mapping[int, ConfigRecord] | None = None,
    ) -> list[Message]:
        """One message per node. ``trainable``: the update keys (None = not known yet, so no
        base-once); ``keys``: the arrays and config record names; ``extra``: more records
        (SCAFFOLD's control variate); ``site_records``: a simulation pool's ``sim-site`` record
        per node (the site it acts for; orchestrator/contract/site_pool.py)."""
        more = extra or {}
        if self.download == "fp16":
            arrays = fp16_download(arrays)

        def message(content: RecordDict, node: int) -> Message:
            if site_records is not None:  # the shared records, plus this node's site
                content = RecordDict({**content, SIM_SITE: site_records[node]})
            return Message(content=content, dst_node_id=node, message_type=kind)

        if not self.base_once or trainable is None:
            content = RecordDict({keys[0]: arrays, keys[1]: config, **more})
            return [message(content, n) for n in nodes]
        # Every message names the base by hash; a site that holds it gets the trainable tensors.
        views = to_numpy(arrays)
        digest = base_hash({k: v for k, v in views.items() if k not in trainable})
        cfg = ConfigRecord(dict(config))
        cfg[BASE_HASH] = digest
        full = RecordDict({keys[0]: arrays, keys[1]: cfg, **more})
        light_arrays = ArrayRecord({k: arrays[k] for k in arrays if k in trainable})
        light = RecordDict({keys[0]: light_arrays, keys[1]: cfg, **more})
        # With a simulation pool the node, not the site, holds the base (base_cache.py keeps it
        # in the node's Context): every site the node acts for is sent the light message.
        return [message(light if self.site_base.get(n) == digest else full, n) for n in nodes]

    def note(self, msg: Message) -> None:
        """Learn from a reply whether its site holds the base (``site`` record ``base-hash``);
        an error reply (e.g. a site that lost its base) clears it."""
        if not self.base_once:
            return
        node = msg.metadata.src_node_id
        try:
            rec = None if msg.has_error() else msg.content.get(SITE)
            digest = rec.get(BASE_HASH) if isinstance(rec, ConfigRecord) else None
        except Exception:  # malformed: treat as not holding it
            digest = None
        if isinstance(digest, str) and len(digest) == 64:
            self.site_base[node] = digest
        else:
            self.site_base.pop(node, None)


def with_compression(steps: list[str], c: CompressionConfig) -> list[str]:
    """The server pipeline's ``--dry-run`` lines with what compression adds."""
    steps = list(steps)
    if c.kind != "none":  # decoded inside "decode + validate", before the reply stages
        steps.insert(2, f"decode: {c.kind} update -> float32 (layout, indices, scales checked)")
    if c.download != "none":
        steps.insert(0, f"send: global model as {c.download}")
    return steps
