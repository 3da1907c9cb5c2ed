"""Shared fixtures. Unit tests never start Ray; integration tests share one real local Ray
(``ray.init(num_cpus=2)``) per session, shut down at the end even when tests fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cluster import local_ray

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data/tokenizer cache for the whole session (tokenizing once keeps tests fast)."""
    return tmp_path_factory.mktemp("fedray-cache")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """A real local Ray with 2 CPUs for the integration tier; always shut down."""
    # The same start-up as `fedray pretrain`'s embedded Ray (never joins or queries another
    # cluster on this machine); shut down when the session ends.
    with local_ray(2, log_to_driver=False) as dashboard_url:
        yield dashboard_url
