"""``fedray submit [CONFIG] [key=value ...] --address http://HEAD:8265``: submit a job to a Ray
cluster through its Job Submission API (:mod:`orchestrator.submit`), then follow its logs
(``--no-wait``: print the job id and return). The config's top-level sections say which job
(:func:`orchestrator.submit.submit_command`): a federated config (``federation``, ``strategy``,
... ; e.g. the ``simulate-demo`` preset) runs ``fedray simulate`` on the cluster, its sites as
Ray actors on the nodes; a pretraining config ``fedray pretrain``; a config with a ``tune``
section the search (``fedray tune``, its trials spread over the nodes).

The job's config is validated here exactly as that command does (exit 2, nothing uploaded);
exit code after following: the job's own (0 succeeded, 1 failed or stopped); 130 after Ctrl-C
detaches (the job keeps running).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.commands.common import EXIT_OK, interrupted, parse, split_config_args


def parser() -> argparse.ArgumentParser:
    from orchestrator.submit import DEFAULT_MAX_UPLOAD_MB

    p = argparse.ArgumentParser(
        prog="fedray submit",
        description="submit a pretraining job, a federated simulation or a search to a Ray "
        "cluster (Job Submission API); the config's sections say which",
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--address", help="the head's dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--dry-run", action="store_true", help="validate, print the submission, exit")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument(
        "--pip", action="append", default=[], metavar="SPEC", help="pip package for the job's env"
    )
    p.add_argument(
        "--no-ship-code",
        dest="ship_code",
        action="store_false",
        help="run the fedray installed on the cluster instead of uploading this checkout's code",
    )
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    return p


def main(argv: Sequence[str]) -> int:
    from orchestrator.config.loader import to_yaml
    from orchestrator.jobs import dashboard_address
    from orchestrator.submit import prepare_job

    ns = parse(parser(), argv)
    source, overrides = split_config_args(ns.args)
    command, job = _load(source, overrides)  # the same validation as the command (exit 2)
    if ns.print_config:
        print(to_yaml(job), end="")
        return EXIT_OK
    job = prepare_job(job, command)
    extra = _launch_plan(job, command)
    address = dashboard_address(ns.address)
    with tempfile.TemporaryDirectory(prefix="fedray-submit-") as tmp:
        submitted = _submit(ns, job, address, Path(tmp), command, extra)
    if submitted is None or ns.no_wait:
        return EXIT_OK
    return _follow(*submitted)


def _load(source: str | None, overrides: list[str]) -> tuple[str, Any]:
    """(command, validated config): the command told by the config's top-level sections, the
    config loaded and checked by that command's schema."""
    from orchestrator.config.loader import load_dictconfig, source_keys, to_job
    from orchestrator.submit import JOB_SCHEMAS, submit_command

    keys = {o.split("=", 1)[0].split(".")[0].lstrip("+~") for o in overrides}
    command = submit_command(keys | (source_keys(source) if source else set()), source)
    if command == "tune":
        from orchestrator.tune.setup import load_tune

        return "tune", load_tune(source, overrides).tune_job
    schema, preset = JOB_SCHEMAS[command]
    return command, to_job(
        schema, load_dictconfig(schema, source, overrides, default_preset=preset)
    )


def _launch_plan(job: Any, command: str) -> dict[str, Any]:
    """What ``fedray simulate`` checks from the config alone before it starts anything (whole
    CPUs per site, no ``cluster.num_cpus``): checked here too, before uploading, and shown by
    ``--dry-run``. The data is on the cluster: the partition is checked there."""
    if command != "simulate":
        return {}
    from orchestrator.federated.sim_cluster import federation_config

    return {"federation_config": federation_config(job)}


def _submit(
    ns: argparse.Namespace, job: Any, address: str, tmp: Path, command: str, extra: dict
) -> tuple[Any, str] | None:
    """Build the submission in ``tmp``; print it (``--dry-run``: None) or submit it (the client
    and the job's id)."""
    from orchestrator.commands.plan import print_dry_run
    from orchestrator.jobs import connect
    from orchestrator.submit import build_submission

    sub = build_submission(
        job, tmp, ship_code=ns.ship_code, pip=ns.pip, max_upload_mb=ns.max_upload_mb,
        command=command,
    )  # fmt: skip
    if ns.dry_run:
        print_dry_run(job, {"submission": sub.plan(address), **extra})
        return None
    client = connect(address)
    job_id = client.submit_job(
        entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, metadata=sub.metadata
    )
    print(f"[fedray] submitted {job_id} to {address}", flush=True)
    print(f"[fedray] run dir on the cluster: {sub.metadata['fedray_run_dir']}", flush=True)
    print(
        f"[fedray] fedray jobs logs {job_id} --follow | fedray jobs stop {job_id}"
        f" (--address {address})",
        flush=True,
    )
    return client, job_id


def _follow(client: Any, job_id: str) -> int:
    from orchestrator.jobs import follow_logs, status_exit_code

    try:
        status = follow_logs(client, job_id)
    except KeyboardInterrupt as e:
        return interrupted(
            e, f"[fedray] detached; {job_id} keeps running (fedray jobs stop {job_id})"
        )
    print(f"[fedray] {job_id}: {status}", flush=True)
    return status_exit_code(status)


__all__ = ["main", "parser"]
