"""The ``compression`` section of a federated job: how updates (and the global model) travel.

Sites send their update encoded (``kind``); the server decodes and validates it like any reply
(``strategies/validation.py``). See docs/federated.md, "Saving bandwidth". The codecs themselves
are in :mod:`orchestrator.contract.compression`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from orchestrator.config.schema import require

CompressionKind = Literal["none", "fp16", "int8", "topk"]
DownloadKind = Literal["none", "fp16"]
KINDS: tuple[str, ...] = get_args(CompressionKind)
DOWNLOADS: tuple[str, ...] = get_args(DownloadKind)
MAX_BLOCK_SIZE = 1 << 20


@dataclass
class CompressionConfig:
    """Update compression on the upload, and optionally the global model on the download."""

    kind: CompressionKind = "none"
    """``none`` (float32 update) | ``fp16`` (half precision: 2x fewer bytes) | ``int8`` (8-bit
    codes with one float32 scale per ``block_size`` values, stochastic rounding: unbiased,
    ~3.9x fewer bytes) | ``topk`` (the ``ratio`` largest-magnitude entries as int32 index +
    float32 value, with error feedback at the site: what is not sent is added to the next
    round's update)."""
    ratio: float = 0.01
    """``topk``: share of the update's entries sent each round (over all tensors together);
    bytes ~ 2 x ratio x the float32 update."""
    block_size: int = 256
    """``int8``: values per scale. Smaller = lower error, more scale bytes (4 / block_size per
    value)."""
    download: DownloadKind = "none"
    """The global model sent to sites: ``none`` (float32) or ``fp16`` (half the download bytes;
    sites train from the fp16-rounded weights and their update is taken against what they
    received, so the server's float32 model gets no rounding error added)."""
    lora_base_once: bool = True
    """LoRA mode: send the frozen base weights to a site only when it lacks them (first round,
    new run, site restart without its state); otherwise only the trainable tensors travel. The
    site checks its cached base against a hash the server sends."""

    def __post_init__(self) -> None:
        require(self.kind in KINDS, self, "kind", " | ".join(KINDS))
        require(
            0.0 < self.ratio <= 0.5,
            self,
            "ratio",
            "a float in (0, 0.5] (top-k above half the entries costs more than fp32)",
        )
        require(
            8 <= self.block_size <= MAX_BLOCK_SIZE,
            self,
            "block_size",
            f"an integer in [8, {MAX_BLOCK_SIZE}]",
        )
        require(self.download in DOWNLOADS, self, "download", " | ".join(DOWNLOADS))
