"""Shared fixtures. Unit tests never start Ray; integration tests share one real local Ray
(``ray.init(num_cpus=2)``) per session, shut down at the end even when tests fail."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from orchestrator.cluster import DASHBOARD_READY_ENV, DASHBOARD_READY_S, local_ray

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
# Ray gives its dashboard 60 s to start and each dashboard module process 30 s; several Ray
# instances starting at once (one per xdist worker) on a loaded 2-core machine can take longer.
os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "240")


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
    _second_ctrl_c_exits()
    # Every Ray a test starts (`ray start`, ray.cluster_utils, the embedded one) waits as long as
    # `fedray pretrain`'s does for its dashboard's modules on a loaded machine.
    os.environ.setdefault(DASHBOARD_READY_ENV, DASHBOARD_READY_S)
    if hasattr(config, "workerinput"):
        return
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    if not sys.platform.startswith("linux"):  # no /proc to find the run's processes by
        os.environ["FEDRAY_TEST_RUN"] = token
        return
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


WORKERS = 4
"""xdist workers for a run that includes the integration tier (``-n auto``, pyproject.toml): its
tests mostly wait (heartbeats, polls, other processes), so 4 share 2 cores well; ~11 GB peak."""


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: ``PYTEST_XDIST_AUTO_NUM_WORKERS`` if set; the unit tier alone (``-m "not
    integration"``: CPU-bound, seconds per test) one worker per core; otherwise ``WORKERS``."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    if (config.option.markexpr or "").split() == ["not", "integration"]:
        return min(2, os.cpu_count() or 1)
    return WORKERS


def _second_ctrl_c_exits() -> None:
    """The first Ctrl-C (SIGINT) interrupts the run as usual (teardown, summary); a second one
    ends this process at once, whatever the teardown was waiting on (a Ray shutdown, a process
    that ignores SIGTERM): the reaper then kills what is left."""
    if threading.current_thread() is not threading.main_thread():
        return
    seen = []

    def on_sigint(signum: int, frame: object) -> None:
        if seen:
            sys.stderr.write("\nsecond Ctrl-C: exiting now (tests/reaper.py stops the rest)\n")
            sys.stderr.flush()
            os._exit(128 + signal.SIGINT)
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)


def _groups_file() -> Path:
    """Where xdist workers leave the test -> group map for the controller's scheduler (one file
    per run: the run's token is in the name)."""
    return Path(tempfile.gettempdir()) / f"fedray-xdist-groups-{os.environ['FEDRAY_TEST_RUN']}.json"


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadgroup`` that works with pytest 9: xdist 3.8 tells groups apart by a suffix it
    appends to ``item._nodeid``, which pytest 9 no longer reads (``nodeid`` comes from
    ``item._id``), so every test would be handed out alone. Here the workers write the groups
    they marked (``_group_shared_fixtures``) to a file, and the controller's scheduler reads them
    once every worker has collected (before it hands out the first test)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # an xdist that does it itself
                return nodeid.split("@")[-1]
            if self.groups is None:
                try:
                    self.groups = json.loads(_groups_file().read_text())
                except FileNotFoundError:
                    self.groups = {}
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def _write_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput") or "FEDRAY_TEST_RUN" not in os.environ:
        return
    groups = {}
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})  # fmt: skip
        if names:
            groups[item.nodeid] = "@" + "_".join(names)
    path = _groups_file()
    tmp = path.with_suffix(f".{config.workerinput['workerid']}.tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)  # every worker writes the same map; each write is whole


def pytest_unconfigure(config: pytest.Config) -> None:
    """A normal end: closing the reaper's stdin makes it sweep (nothing should be left)."""
    if not hasattr(config, "workerinput") and "FEDRAY_TEST_RUN" in os.environ:
        with contextlib.suppress(FileNotFoundError, KeyError):
            _groups_file().unlink()
    reaper = config.stash.get(_REAPER, None)
    if reaper is not None and reaper.stdin is not None:
        reaper.stdin.close()


_REAPER = pytest.StashKey[subprocess.Popen]()


REPLICABLE_FIXTURES = frozenset({"fed", "superlink", "demo_tok"})
"""Module-scoped fixtures cheap enough to build once per xdist worker (keys and CSV files, one
idle SuperLink, a small tokenizer): sharing one does not put tests in one group."""

SLOW_FIRST = {
    "test_sites": 0,
    "test_kill_safety": 1,
    "test_deepspeed": 1,
    "test_multinode": 2,
    "test_pretrain": 2,
    "test_site_processes": 3,
}
"""Where a module's tests start among the integration tests (lower first; others: 5): the
longest start first, so that the shorter ones fill the workers at the end (xdist hands tests out
in collection order; ``--no-loadscope-reorder``)."""


@pytest.hookimpl(wrapper=True)  # this part runs before xdist reads the xdist_group marks
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    if not has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    _group_shared_fixtures(items)

    def order(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        i, item = pair
        if "integration" not in item.keywords:
            return (1, 0, i)
        return (0, SLOW_FIRST.get(item.path.stem, 5), i)

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]
    _write_groups(config, items)
    return (yield)


def _group_shared_fixtures(items: list[pytest.Item]) -> None:
    """Tests that share a module-scoped fixture of their module (one expensive run that several
    tests check, or a directory they fill together) go to one xdist worker, in order: mark them
    ``xdist_group`` (``--dist loadgroup``). Tests sharing nothing of the kind are handed out one
    by one. Tests that already name a group keep it."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    shared: dict[pytest.Item, list[str]] = {}
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        module = item.nodeid.split("::", 1)[0]
        names = []
        for name, defs in info.name2fixturedefs.items():
            d = defs[-1]
            own = d.baseid.split("::", 1)[0] == module  # defined in the test module itself
            if (
                own
                and d.scope in ("module", "class", "package")
                and name not in REPLICABLE_FIXTURES
            ):
                names.append(f"{module}::{name}")
        for n in names:
            parent[find(n)] = find(names[0])
        if names:
            shared[item] = names
    for item, names in shared.items():
        root = find(names[0])
        item.add_marker(pytest.mark.xdist_group(root.replace("/", ".")))


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
