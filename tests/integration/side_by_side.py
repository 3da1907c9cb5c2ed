"""Run independent, mostly waiting checks at the same time (threads): a process starting up,
a poll, a signal and its clean-up overlap instead of queueing. Every case runs to its end and
every failure is reported, each under its own name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor


def side_by_side(cases: Mapping[str, Callable[[], None]]) -> None:
    with ThreadPoolExecutor(max_workers=len(cases), thread_name_prefix="case") as pool:
        futures = {name: pool.submit(case) for name, case in cases.items()}
    failed: dict[str, BaseException] = {}
    for name, future in futures.items():
        if (error := future.exception()) is not None:
            failed[name] = error
    if failed:
        report = "\n\n".join(f"[{n}] {type(e).__name__}: {e}" for n, e in failed.items())
        raise AssertionError(f"{len(failed)} of {len(cases)} cases failed:\n{report}") from next(
            iter(failed.values())
        )
