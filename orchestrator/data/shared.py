"""Is a directory on storage that every node of the Ray cluster sees?

Training workers on any node memory-map the token cache the driver wrote, so on a multi-node
cluster ``data.cache_dir`` must be a shared filesystem (NFS, Lustre, a mounted bucket...). The
driver writes a marker file with a random token there and a task pinned to each alive node
reads it back; any node that cannot is named in a :class:`ConfigError` before training starts.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.config.loader import ConfigError

MARKER_PREFIX = ".fedray-shared-"
CHECK_TIMEOUT_S = 60.0


def read_marker(path: str) -> str | None:
    """The marker's content as this node sees it, or None when it cannot read it."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def unshared_nodes(
    marker: Path, token: str, nodes: Sequence[str], read_on: Callable[[str, str], str | None]
) -> list[str]:
    """The nodes on which ``read_on(node, marker)`` does not return ``token``."""
    return [n for n in nodes if read_on(n, str(marker)) != token]


def shared_error(directory: Path, key: str, bad: Sequence[str], total: int) -> ConfigError:
    return ConfigError(
        f"{key}={str(directory)!r} is not on storage that every node sees: {len(bad)} of "
        f"{total} nodes ({', '.join(bad)}) cannot read a file the driver wrote there. Workers "
        f"on every node read the token cache from it: set {key} to a directory on a shared "
        "filesystem (NFS, Lustre, a mounted bucket) mounted at the same path on all nodes.",
        key,
    )


def check_shared_storage(directory: Path, key: str) -> None:
    """On a cluster of more than one alive node, raise ConfigError unless all see ``directory``
    (call inside a connected Ray session; one node is a no-op)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = {
        n["NodeID"]: n.get("NodeManagerAddress", n["NodeID"]) for n in ray.nodes() if n["Alive"]
    }
    if len(nodes) <= 1:
        return
    token = secrets.token_hex(16)
    marker = directory / f"{MARKER_PREFIX}{token}"
    marker.write_text(token)
    remote = ray.remote(num_cpus=0)(read_marker)
    try:
        refs = {
            node: remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(str(marker))
            for node in nodes
        }

        def read_on(node: str, _: str) -> str | None:
            try:
                return ray.get(refs[node], timeout=CHECK_TIMEOUT_S)
            except Exception:  # a node that cannot run the check cannot read the cache either
                return None

        bad = unshared_nodes(marker, token, list(nodes), read_on)
    finally:
        os.unlink(marker)
    if bad:
        raise shared_error(directory, key, [nodes[b] for b in bad], len(nodes))
