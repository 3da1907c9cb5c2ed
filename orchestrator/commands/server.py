"""``fedray server``: run a federated job across real sites (parse, check, serve).

    fedray server job.yaml run.dir=runs/fed1 --certs certs/ --site-keys keys/ --port 9093
    fedray server --resume runs/fed1 federation.num_rounds=10 --certs certs/ --site-keys keys/

The work is done by :mod:`orchestrator.processes.server_session`. :func:`server_main` returns an
exit code (:mod:`orchestrator.commands.common`): 0 ok, 1 failed while running, 2 bad input
(nothing was started), 128 + N after signal N, once every process it started is stopped by PID.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.commands.common import (
    EXIT_OK,
    UsageError,
    add_job_args,
    config_error,
    failed,
    interrupted,
    parse,
    split_config_args,
    stoppable,
)
from orchestrator.processes.launch import DEFAULT_PORT

log = logging.getLogger(__name__)


def server_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray server",
        description="Run a federated job across real sites: start a Flower SuperLink (TLS and "
        "site authentication by default), submit the run, stream the round table.",
    )
    add_job_args(
        p,
        "YAML file or preset (same format as `fedray simulate`), then overrides",
        "validate, print the commands to run, exit",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run with RUN_DIR/config.yaml; key=value overrides may change "
        "only what does not change the result (e.g. federation.num_rounds=10 to extend it)",
    )
    p.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="submit to an already running SuperLink instead of starting one",
    )
    p.add_argument("--root-cert", type=Path, help="CA to verify --superlink with")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the SuperLink binds (default 127.0.0.1). Anything else exposes Flower's "
        "unauthenticated Control API: keep it on loopback behind the Fleet-only proxy "
        "(cluster-configs/federated/nginx-fleet.conf); a warning is logged otherwise",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="SuperLink HTTPS port")
    p.add_argument(
        "--certs",
        type=Path,
        help="directory with ca.pem, server.pem, server.key (default: test certificates "
        "created in RUN_DIR/tls)",
    )
    p.add_argument(
        "--site-keys",
        type=Path,
        nargs="+",
        default=[],
        metavar="PUB",
        help="sites' public keys to register: .pub files or directories of them",
    )
    p.add_argument(
        "--no-site-auth",
        action="store_true",
        help="let any SuperNode join (logs a warning)",
    )
    p.add_argument(
        "--insecure", action="store_true", help="plain HTTP, no site auth (logs a warning)"
    )
    return p


def _server_job(ns: argparse.Namespace) -> tuple[Any, Path]:
    """The job and run directory from CONFIG/overrides, or from ``--resume RUN_DIR`` with
    overrides merged over its ``config.yaml``. Bad input raises :class:`ConfigError` (a changed
    key that a resumed run may not change: naming the keys) or :class:`UsageError`."""
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config, to_yaml
    from orchestrator.federated.resume import check_resumable
    from orchestrator.runs import resolve_run_dir

    source, overrides = split_config_args(ns.args)
    if ns.resume is None:
        job = load_config(FederatedJob, source, overrides, default_preset="simulate-demo")
        return job, resolve_run_dir(job.run, "server")
    if source is not None:
        raise UsageError(
            f"--resume RUN_DIR takes the config from RUN_DIR/config.yaml; drop {source!r} "
            "(key=value overrides are allowed, e.g. federation.num_rounds=10)"
        )
    run_dir = ns.resume.expanduser().absolute()
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        raise UsageError(
            f"{cfg} not found: --resume needs the directory of a run started by fedray"
        )
    job = load_config(FederatedJob, str(cfg), overrides)
    check_resumable(cfg.read_text(), to_yaml(job), run_dir)
    return job, run_dir


def _server_options(ns: argparse.Namespace) -> Any:
    from orchestrator.processes.server_session import ServerOptions

    return ServerOptions(
        host=ns.host,
        port=ns.port,
        insecure=ns.insecure,
        certs=ns.certs,
        site_keys=list(ns.site_keys),
        site_auth=not (ns.no_site_auth or ns.insecure),
        superlink=ns.superlink,
        root_cert=ns.root_cert,
    )


def server_main(argv: Sequence[str]) -> int:
    ns = parse(server_parser(), argv)
    return stoppable(lambda: _server(ns))


def _server(ns: argparse.Namespace) -> int:
    from orchestrator.config.loader import to_yaml

    job, run_dir = _server_job(ns)
    if ns.print_config:
        print(to_yaml(job), end="")
        return EXIT_OK
    if ns.insecure and ns.site_keys:
        raise UsageError(
            "--site-keys needs TLS: Flower authenticates sites only over TLS; drop --insecure"
        )
    opts = _server_options(ns)
    if ns.dry_run:
        from orchestrator.commands.plan import print_dry_run, privacy_plan
        from orchestrator.processes.server_session import server_plan

        print_dry_run(job, {**server_plan(job, opts, run_dir), "privacy": privacy_plan(job)})
        return EXIT_OK
    try:
        _check_before_start(job, opts)
    except ValueError as e:  # ConfigError, PortInUse, a bad --superlink address
        return config_error(e)
    from orchestrator.progress import round_progress
    from orchestrator.run_log import console_to_run_log

    # Flower's CLI chatter and the ServerApp's library lines go to RUN_DIR/run.log only.
    with (
        console_to_run_log(run_dir, ns.verbose or job.logging.verbose),
        round_progress(run_dir, job.federation.num_rounds),
    ):
        return _serve(job, opts, run_dir, resume=ns.resume is not None)


def _check_before_start(job: Any, opts: Any) -> None:
    """What can be checked before a process starts: the SuperLink's port and, when the
    ServerApp will run on this machine, the files it reads before round 0."""
    from orchestrator.federated.setup import check_inputs
    from orchestrator.processes.launch import parse_address
    from orchestrator.processes.network import check_port_free

    if opts.superlink:
        parse_address(opts.superlink)
        return  # the ServerApp runs next to that SuperLink, which holds its files
    check_port_free(
        opts.host,
        opts.port,
        "--port",
        "another SuperLink or program listens there. Pick another with --port, or submit to "
        "the running SuperLink with --superlink HOST:PORT",
    )
    check_inputs(job)


def _serve(job: Any, opts: Any, run_dir: Path, resume: bool) -> int:
    from orchestrator.processes import server_session

    try:
        result = server_session.serve(job, opts, run_dir, resume=resume)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return config_error(e)
    except KeyboardInterrupt as e:
        return interrupted(e, f"continue with: fedray server --resume {run_dir}")
    except (RuntimeError, TimeoutError) as e:
        return failed(e)
    print(f"run {result.run_id}: {result.status}\nrun directory: {run_dir}")
    if not result.ok:
        return failed(
            f"the run did not complete ({result.status}); see {run_dir}/server/logs. "
            f"Continue from the last complete round with: fedray server --resume {run_dir}"
        )
    from orchestrator.report import report_hint

    print(f"export: {result.export_dir}")
    print(report_hint(run_dir))
    return EXIT_OK


__all__ = ["server_main", "server_parser"]
