"""Tokenization as Ray tasks, so that the nodes of a cluster share the work.

:class:`RayTasks` is a :class:`concurrent.futures.Executor` over Ray tasks: ``submit(fn, ...)``
runs ``fn`` as a 1-CPU task named :data:`TASK_NAME` with ``tokenizer=<the tokenizer>`` added
(put in the object store once, not once per task) and returns a future of its result. The packing
code drives it exactly like its process pool: one task per batch of text, each writing one shard
file under the (shared) cache directory and returning its token count, with a bounded number of
batches in flight. A task's exception reaches the caller as itself (a :class:`ConfigError` stays a
ConfigError, so the CLI exits 2), not wrapped in Ray's ``RayTaskError``.

Used when fedray is connected to a Ray cluster (``cluster.address`` set); call only while
connected (``ray.is_initialized()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger(__name__)

TASK_NAME = "fedray-tokenize"
MAX_PARALLELISM = 32
"""Tasks in flight at most (x2 batches of ~4 MB text): the driver reads the corpus alone, and a
few dozen tokenizers already outrun one reader."""
CANCEL_WAIT_S = 30.0


def cluster_parallelism(num_proc: int | None) -> int:
    """``data.num_proc`` if set, else the cluster's CPUs, between 1 and :data:`MAX_PARALLELISM`."""
    if num_proc is not None:
        return num_proc
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(MAX_PARALLELISM, cpus))


def _unwrapped(src: Future[Any]) -> Future[Any]:
    """A future that fails with the task's own exception instead of Ray's wrapper."""
    from ray.exceptions import RayTaskError

    dst: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        try:
            dst.set_result(f.result())
        except RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            dst.set_exception(cause)
        except BaseException as e:  # a lost worker or node past its retries, cancellation...
            dst.set_exception(e)

    src.add_done_callback(done)
    return dst


class RayTasks(Executor):
    """Runs ``fn(*args, tokenizer=..., **kwargs)`` as Ray tasks (see the module docstring)."""

    def __init__(self, tokenizer: Any):
        import ray

        self._tokenizer_ref = ray.put(tokenizer)
        self._remote: dict[Callable[..., Any], Any] = {}
        self._refs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        import ray

        remote = self._remote.get(fn)
        if remote is None:
            # Retried if a node or worker dies (a shard is rewritten whole); an exception the
            # task raises is not retried: it would fail the same way again.
            remote = ray.remote(num_cpus=1, max_retries=3)(fn).options(name=TASK_NAME)
            self._remote[fn] = remote
        ref = remote.remote(*args, tokenizer=self._tokenizer_ref, **kwargs)
        self._refs = [*_pending(self._refs), ref]
        return _unwrapped(ref.future())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel the tasks still running (after an error: the caller deletes their directory)
        and wait for them to stop, so none writes into a directory that is gone."""
        import ray

        pending = _pending(self._refs)
        self._refs = []
        if not pending:
            return
        for r in pending:
            ray.cancel(r)
        if wait:
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)


def _pending(refs: list[Any]) -> list[Any]:
    """The refs whose tasks have not finished."""
    import ray

    if not refs:
        return []
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    return list(pending)
