"""Shared fixtures. Unit tests never start Ray; integration tests share one real local Ray
(``ray.init(num_cpus=2)``) per session, shut down at the end even when tests fail."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cluster import free_local_port, local_ray

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    return free_local_port()


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_configure(config: pytest.Config) -> None:
    """In the controller (not in xdist workers): mark this run's processes and start the reaper
    that SIGKILLs all of them once the controller is gone, however it ends (tests/reaper.py).
    Everything started from here on inherits ``FEDRAY_TEST_RUN``; a nested pytest (a test that
    runs pytest) gets a token of its own."""
    if hasattr(config, "workerinput") or not sys.platform.startswith("linux"):
        return
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if k != "FEDRAY_TEST_RUN"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    reaper = subprocess.Popen(
        [sys.executable, "-m", "tests.reaper", token, str(os.getpid())],
        stdin=subprocess.PIPE,
        env=env,
        cwd=root,
        start_new_session=True,  # a Ctrl-C or a kill of pytest's process group spares it
    )
    os.environ["FEDRAY_TEST_RUN"] = token
    config.stash[_REAPER] = reaper


def pytest_unconfigure(config: pytest.Config) -> None:
    """A normal end: closing the reaper's stdin makes it sweep (nothing should be left)."""
    reaper = config.stash.get(_REAPER, None)
    if reaper is not None and reaper.stdin is not None:
        reaper.stdin.close()


_REAPER = pytest.StashKey[subprocess.Popen]()


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
