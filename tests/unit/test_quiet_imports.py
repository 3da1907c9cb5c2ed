"""torchao's import-time notices (optional CUDA kernels, Triton, a deprecated enum call) never
reach a fedray process's output; everything else torchao or torch logs still does."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from orchestrator import quiet_imports

NOTICES = ("Failed to load", "Detected no triton", "is an Enum subclass and is now natively")


def test_importing_a_model_through_fedray_prints_none_of_them() -> None:
    pytest.importorskip("torchao")  # the notices come with torchao (the compress extra)
    code = "import clients; from transformers.models.gpt2 import modeling_gpt2"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [n for n in NOTICES if n in done.stdout + done.stderr], done.stderr[-2000:]


def test_only_the_named_messages_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_imports.install()
    quiet_imports.install()  # idempotent
    logger = logging.getLogger("torchao")
    assert sum(isinstance(f, quiet_imports.DropNotice) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="torchao"):
        logger.warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logger.warning("Something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["Something else went wrong"]
