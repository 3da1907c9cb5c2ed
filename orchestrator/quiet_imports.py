"""Two import-time notices that say nothing to a fedray user, dropped wherever fedray runs.

With torchao installed (the ``compress`` extra), transformers imports it in every process that
loads a model, and torchao 0.18 then logs, on every import: that its optional CUDA kernels
(``_C_mxfp8``, ``_C_cutlass_90a``; built for another Python/GPU) could not load, that Triton
(a GPU compiler) is missing, and, through torch, that two of its enums are registered with a
deprecated call. Neither affects the CPU int8/int4 paths ``fedray compress`` uses; left alone
they land on the console of every command (and made one-line error messages several lines
long). Only these exact messages are dropped.
"""

from __future__ import annotations

import logging

NOISE = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


class DropNotice(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def install() -> None:
    """Add the filters (once per process; a second call adds nothing)."""
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotice) for f in logger.filters):
            logger.addFilter(DropNotice(fragments))
