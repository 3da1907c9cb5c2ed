"""Persistent site state: named float arrays a site keeps from one round to the next.

SCAFFOLD's site control variate and top-k compression's error-feedback residual are site state:
the site computes them, keeps them, and only ever sends changes. They must survive across rounds
and restarts, and must never leak from one federation into another.

    # the ClientApp builds one per train message and hands it to update stages (ctx.state)
    store = site_store(context, task.state_key, task.server_round, node_config, task.sim_state_dir)
    c_i = store.load("scaffold-c", like=trainable)   # None: nothing usable yet (start from zeros)
    ...
    store.save("scaffold-c", new_c_i)

Where the state lives (:func:`site_store`):

* **simulation**: in Flower's ``Context.state`` (per simulated node, kept across rounds), mirrored
  to ``RUN_DIR/site-state/site-<id>/`` on the same machine (the task's ``sim_state_dir``), so a
  resumed simulation (a new process, empty contexts) continues exactly. On a pool of
  simulation nodes (``federation.simulation_nodes``; one node acts for many sites) a site's
  state lives in that mirror only (``Context.state`` is per node, not per site);
* **a real site**: on disk under the node config's ``state-dir`` (``fedray site --state-dir``),
  one safetensors file per version written atomically (temporary name, fsync, rename), so it
  survives site restarts. Without ``state-dir`` it lives in ``Context.state`` only (logged: lost
  when the SuperNode restarts).

**Identity.** Everything is keyed by the task's ``state_key``, a random token the server draws
when a run starts and keeps in its checkpoints: a resumed run finds its state, a different run
(or a fresh run in the same directory) never sees stale state.

**Versions by round.** ``save`` during round ``r`` writes version ``r`` and keeps the newest older
one; ``load`` during round ``r`` returns the newest version written *before* round ``r``. A server
that crashes after sites trained round ``r`` but before it checkpointed round ``r`` re-runs round
``r`` after resume; the sites then start again from their pre-``r`` state, so resume is exact.

**Validation.** State read back is untrusted (a disk can corrupt it, a bug or another version can
write the wrong thing): unreadable files, missing or extra tensors, other shapes or dtypes, and
NaN/Inf give a logged reset (``load`` returns None and :attr:`SiteStateStore.resets` names the
reason; the ClientApp reports it as the ``site-state-reset`` metric) instead of training on bad
state.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, Context
from safetensors.numpy import load_file, save_file

from orchestrator.contract.arrays import Arrays, array_view, from_numpy
from orchestrator.contract.site_pool import POOLED

log = logging.getLogger(__name__)


def simulated_site(node_config: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(partition-id, num-partitions)`` of a simulated site; None for a real site."""
    if "data-path" in node_config or "partition-id" not in node_config:
        return None
    return int(node_config["partition-id"]), int(node_config["num-partitions"])


FORMAT = "fedray-site-state-1"
STATE_DIR_KEY = "state-dir"
"""Node config key of a real site's state directory."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^round-(\d{4,})\.safetensors$")
_CONTEXT_PREFIX = "fedray-site-state"
_WARNED_IN_MEMORY: set[str] = set()


class Backend(Protocol):
    """Versioned storage of named array sets (``version`` = the round that wrote it)."""

    where: str

    def versions(self, name: str) -> list[int]: ...

    def read(self, name: str, version: int) -> Arrays: ...

    def write(self, name: str, version: int, arrays: Mapping[str, np.ndarray]) -> None: ...

    def delete(self, name: str, version: int) -> None: ...


class ContextBackend:
    """Versions as ``ArrayRecord``s in Flower's ``Context.state`` (lives as long as the node)."""

    def __init__(self, context: Context, state_key: str, scope: str = "") -> None:
        self.state = context.state
        # scope: the site, when one node acts for many (a simulation pool)
        self.prefix = f"{_CONTEXT_PREFIX}/{state_key}" + (f"/{scope}" if scope else "")
        self.where = "Flower Context.state"

    def _key(self, name: str, version: int) -> str:
        return f"{self.prefix}/{name}/{version}"

    def versions(self, name: str) -> list[int]:
        head = f"{self.prefix}/{name}/"
        return sorted(int(k[len(head) :]) for k in self.state if k.startswith(head))

    def read(self, name: str, version: int) -> Arrays:
        record = self.state[self._key(name, version)]
        if not isinstance(record, ArrayRecord):
            raise ValueError(f"context entry is a {type(record).__name__}, not an ArrayRecord")
        return {k: array_view(v) for k, v in record.items()}

    def write(self, name: str, version: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.state[self._key(name, version)] = from_numpy(arrays)

    def delete(self, name: str, version: int) -> None:
        self.state.pop(self._key(name, version), None)


class DiskBackend:
    """Versions as ``DIR/<state_key>/<name>/round-000R.safetensors``, written atomically."""

    def __init__(self, root: str | Path, state_key: str) -> None:
        self.root = Path(root).expanduser() / state_key
        self.state_key = state_key
        self.where = str(self.root)

    def _path(self, name: str, version: int) -> Path:
        return self.root / name / f"round-{version:04d}.safetensors"

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION.match(p.name)))

    def read(self, name: str, version: int) -> Arrays:
        path = self._path(name, version)
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:  # parses the header only
            meta = f.metadata() or {}
        expected = {"format": FORMAT, "state-key": self.state_key, "name": name}
        expected["round"] = str(version)
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise ValueError(f"{path.name}: metadata {wrong} does not match {expected}")
        return load_file(str(path))

    def write(self, name: str, version: int, arrays: Mapping[str, np.ndarray]) -> None:
        final = self._path(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.name}-")
        os.close(fd)
        try:
            meta = {"format": FORMAT, "state-key": self.state_key, "name": name}
            meta["round"] = str(version)
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=meta)
            with open(tmp, "rb") as f:  # the bytes reach the disk before the rename publishes them
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str, version: int) -> None:
        self._path(name, version).unlink(missing_ok=True)


class SiteStateStore:
    """Named array sets of one site in one run, as of the current round (see module doc).

    ``backends``: the first one is read first; every one is written (simulation: the context,
    then its disk mirror).
    """

    def __init__(
        self, backends: list[Backend] | Callable[[], list[Backend]], server_round: int
    ) -> None:
        # A callable is resolved on first use: a site that keeps no state touches nothing.
        self._backends = backends
        self.server_round = server_round
        self.resets: dict[str, str] = {}
        """Names whose stored state was unusable in this round, with the reason."""

    @property
    def backends(self) -> list[Backend]:
        if callable(self._backends):
            self._backends = self._backends()
        if not self._backends:
            raise ValueError("a site state store needs at least one backend")
        return self._backends

    def load(self, name: str, like: Mapping[str, np.ndarray] | None = None) -> Arrays | None:
        """The newest state ``name`` saved before this round (copies), or None when there is
        none or it is unusable (logged; see :attr:`resets`).

        ``like``: the arrays the state must match (same keys, shapes, dtypes), e.g. the model's
        trainable tensors; every array must be finite either way.
        """
        _check_name(name)
        for backend in self.backends:
            older = [v for v in backend.versions(name) if v < self.server_round]
            if not older:
                continue
            try:
                arrays = backend.read(name, older[-1])
                check_arrays(arrays, like)
            except Exception as e:  # a corrupt file / record is a reset, never a crash
                reason = f"{type(e).__name__}: {str(e)[:300]}"
                log.warning(
                    "site state %r (round %d) in %s is unusable, starting it afresh: %s",
                    name,
                    older[-1],
                    backend.where,
                    reason,
                )
                self.resets[name] = reason
                return None
            return {k: np.array(v) for k, v in arrays.items()}
        return None

    def save(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store ``arrays`` as this round's version of ``name``; older versions but the newest
        pre-round one are dropped (a re-run of this round still finds it)."""
        _check_name(name)
        check_arrays(arrays, None)
        for backend in self.backends:
            backend.write(name, self.server_round, arrays)
            older = [v for v in backend.versions(name) if v < self.server_round]
            newer = [v for v in backend.versions(name) if v > self.server_round]
            # Newer versions belong to rounds a resumed server will re-run: stale now.
            for v in [*older[:-1], *newer]:
                backend.delete(name, v)


def check_arrays(arrays: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray] | None) -> None:
    """ValueError unless ``arrays`` are finite floats (and match ``like``'s keys/shapes/dtypes)."""
    if like is not None:
        missing, extra = sorted(set(like) - set(arrays)), sorted(set(arrays) - set(like))
        if missing or extra:
            raise ValueError(f"tensors differ: missing={missing[:3]} extra={extra[:3]}")
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise ValueError(f"{k}: not a float array")
        if like is not None:
            ref = like[k]
            if a.shape != tuple(ref.shape) or a.dtype != ref.dtype:
                raise ValueError(
                    f"{k}: {a.dtype}{list(a.shape)}, expected {ref.dtype}{list(ref.shape)}"
                )
        if not np.isfinite(a).all():
            raise ValueError(f"{k}: contains NaN or Inf")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"site state name {name!r}: use letters, digits, '_', '.', '-'")


def state_key_of(task_state_key: str, context: Context) -> str:
    """The run identity state is keyed by: the server's token, else Flower's run id."""
    key = task_state_key or f"flwr-run-{context.run_id}"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        raise ValueError(f"state key {key[:70]!r} from the server: expected 1-64 of [A-Za-z0-9_-]")
    return key


def site_store(
    context: Context,
    state_key: str,
    server_round: int,
    node_config: Mapping[str, Any],
    sim_state_dir: str = "",
) -> SiteStateStore:
    """The store of this site for this run (see the module doc for where it lives).

    ``sim_state_dir``: the server's run-local mirror directory, honoured only by simulated
    sites (a real site never writes where the server says).
    """

    def backends() -> list[Backend]:
        key = state_key_of(state_key, context)
        if (sim := simulated_site(node_config)) is not None and node_config.get(POOLED):
            # A pool node acts for many sites: the state is the site's, never the node's.
            if sim_state_dir:
                return [DiskBackend(Path(sim_state_dir) / f"site-{sim[0]}", key)]
            return [ContextBackend(context, key, scope=f"site-{sim[0]}")]
        if sim is not None:
            found: list[Backend] = [ContextBackend(context, key)]
            if sim_state_dir:
                found.append(DiskBackend(Path(sim_state_dir) / f"site-{sim[0]}", key))
            return found
        if state_dir := node_config.get(STATE_DIR_KEY):
            return [DiskBackend(str(state_dir), key)]
        if key not in _WARNED_IN_MEMORY:
            _WARNED_IN_MEMORY.add(key)
            log.warning(
                "no node config %r: this site keeps its state (e.g. SCAFFOLD's control "
                "variate) in memory only; it is lost when the SuperNode restarts "
                "(fedray site --state-dir DIR)",
                STATE_DIR_KEY,
            )
        return [ContextBackend(context, key)]

    return SiteStateStore(backends, server_round)


__all__ = [
    "STATE_DIR_KEY",
    "ContextBackend",
    "DiskBackend",
    "SiteStateStore",
    "check_arrays",
    "site_store",
    "state_key_of",
]
