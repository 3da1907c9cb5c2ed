"""``fedray server``, ``fedray site``, ``fedray certs``, ``fedray site-key``: argument parsing only.

    fedray certs certs/ --host fl.example.org
    fedray site-key keys/hospital-a
    fedray server job.yaml run.dir=runs/fed1 --certs certs/ --site-keys keys/ --port 9093
    fedray server --resume runs/fed1 federation.num_rounds=10 --certs certs/ --site-keys keys/
    fedray site --server fl.example.org:9092 --data /data/a.csv --key keys/hospital-a \\
        --root-cert certs/ca.pem

The work is done by :mod:`orchestrator.federated.server_session` (server),
:mod:`orchestrator.federated.site` (site) and :mod:`orchestrator.federated.credentials`; each
``*_main(argv)`` returns an exit code: 0 ok, 1 failed while running, 2 bad input (nothing was
started), 128 + N after signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP), once every process the
command started is stopped by PID
(:func:`orchestrator.federated.processes.stop_children_on_signals`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.config.loader import ConfigError
from orchestrator.federated.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, err, stoppable
from orchestrator.federated.launch import DEFAULT_PORT
from orchestrator.federated.processes import interrupted_exit_code
from orchestrator.federated.server_session import ServerOptions, server_plan

# `fedray site` lives in site_command.py; re-exported so `commands` lists every command.
from orchestrator.federated.site_command import site_main, site_options, site_parser
from orchestrator.progress import round_progress
from orchestrator.run_log import console_to_run_log

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# fedray certs / fedray site-key


def certs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray certs",
        description="Create a test CA and a SuperLink server certificate (ca.pem, ca.key, "
        "server.pem, server.key). Sites get ca.pem only.",
    )
    p.add_argument("out_dir", type=Path, help="directory to write the four files into")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP address sites use to reach the server (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def certs_main(argv: Sequence[str]) -> int:
    from orchestrator.federated.credentials import make_test_pki

    ns = certs_parser().parse_args(list(argv))
    try:
        pki = make_test_pki(ns.out_dir, ns.host, ns.days, overwrite=ns.force)
    except (FileExistsError, ValueError) as e:
        err(str(e))
        return EXIT_USAGE
    print(f"CA certificate (give to sites):  {pki.ca_cert}")
    print(f"CA private key (keep offline):   {pki.ca_key}")
    print(f"server certificate / key:        {pki.server_cert} / {pki.server_key}")
    return EXIT_OK


def site_key_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray site-key",
        description="Create a site's key pair: PATH (private, stays at the site) and PATH.pub "
        "(send to the server operator, who registers it).",
    )
    p.add_argument("path", type=Path, help="private key path, e.g. keys/hospital-a")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    return p


def site_key_main(argv: Sequence[str]) -> int:
    from orchestrator.federated.credentials import make_site_key

    ns = site_key_parser().parse_args(list(argv))
    try:
        key = make_site_key(ns.path, overwrite=ns.force)
    except (FileExistsError, ValueError) as e:
        err(str(e))
        return EXIT_USAGE
    print(f"private key (keep at the site, --key):  {key.private}")
    print(f"public key (register on the server):    {key.public}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# fedray server


def server_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray server",
        description="Run a federated job across real sites: start a Flower SuperLink (TLS and "
        "site authentication by default), submit the run, stream the round table.",
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG] key=value",
        help="YAML file or preset (same format as `fedray simulate`), then overrides",
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
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Flower/Ray/DeepSpeed/transformers info lines on the console "
        "(RUN_DIR/run.log always has them)",
    )
    p.add_argument("--print-config", action="store_true", help="print the merged config, exit")
    p.add_argument(
        "--dry-run", action="store_true", help="validate, print the commands to run, exit"
    )
    return p


def _server_job(ns: argparse.Namespace) -> tuple[Any, Path] | None:
    """The job and run directory from CONFIG/overrides, or from ``--resume RUN_DIR`` with
    overrides merged over its ``config.yaml``; None = usage error (printed). A changed key that
    a resumed run may not change is a :class:`ConfigError` naming the keys."""
    from orchestrator.cli_args import split_config_args
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config, to_yaml
    from orchestrator.federated.resume import check_resumable
    from orchestrator.runs import resolve_run_dir

    source, overrides = split_config_args(ns.args)
    if ns.resume is None:
        job = load_config(FederatedJob, source, overrides, default_preset="simulate-demo")
        return job, resolve_run_dir(job.run, "server")
    if source is not None:
        err(
            f"--resume RUN_DIR takes the config from RUN_DIR/config.yaml; drop {source!r} "
            "(key=value overrides are allowed, e.g. federation.num_rounds=10)"
        )
        return None
    run_dir = ns.resume.expanduser().absolute()
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        err(f"{cfg} not found: --resume needs the directory of a run started by fedray")
        return None
    job = load_config(FederatedJob, str(cfg), overrides)
    check_resumable(cfg.read_text(), to_yaml(job), run_dir)
    return job, run_dir


def _server_options(ns: argparse.Namespace) -> ServerOptions:
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
    ns = server_parser().parse_args(list(argv))
    return stoppable(lambda: _server(ns))


def _server(ns: argparse.Namespace) -> int:
    from orchestrator.cli_args import print_dry_run, privacy_plan
    from orchestrator.config.loader import to_yaml

    try:
        loaded = _server_job(ns)
    except ConfigError as e:
        err(f"config error: {e}")
        return EXIT_USAGE
    if loaded is None:
        return EXIT_USAGE
    job, run_dir = loaded
    if ns.print_config:
        print(to_yaml(job), end="")
        return EXIT_OK
    if ns.insecure and ns.site_keys:
        err("--site-keys needs TLS: Flower authenticates sites only over TLS; drop --insecure")
        return EXIT_USAGE
    opts = _server_options(ns)
    if ns.dry_run:
        print_dry_run(job, {**server_plan(job, opts, run_dir), "privacy": privacy_plan(job)})
        return EXIT_OK
    try:
        _check_before_start(job, opts)
    except ValueError as e:  # ConfigError, PortInUse, a bad --superlink address
        err(f"config error: {e}" if isinstance(e, ConfigError) else str(e))
        return EXIT_USAGE
    # Flower's CLI chatter and the ServerApp's library lines go to RUN_DIR/run.log only.
    with (
        console_to_run_log(run_dir, ns.verbose or job.logging.verbose),
        round_progress(run_dir, job.federation.num_rounds),
    ):
        return _serve(job, opts, run_dir, resume=ns.resume is not None)


def _check_before_start(job: Any, opts: ServerOptions) -> None:
    """What can be checked before a process starts: the SuperLink's port and, when the
    ServerApp will run on this machine, the files it reads before round 0."""
    from orchestrator.federated.launch import parse_address
    from orchestrator.federated.processes import check_port_free
    from orchestrator.federated.setup import check_inputs

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


def _serve(job: Any, opts: ServerOptions, run_dir: Path, resume: bool) -> int:
    from orchestrator.federated.server_session import serve

    try:
        result = serve(job, opts, run_dir, resume=resume)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        err(f"{e or 'interrupted'}; continue with: fedray server --resume {run_dir}")
        return interrupted_exit_code(e)
    except (RuntimeError, TimeoutError) as e:
        err(str(e))
        return EXIT_FAILED
    print(f"run {result.run_id}: {result.status}\nrun directory: {run_dir}")
    if not result.ok:
        err(
            f"the run did not complete ({result.status}); see {run_dir}/server/logs. "
            f"Continue from the last complete round with: fedray server --resume {run_dir}"
        )
        return EXIT_FAILED
    from orchestrator.report import report_hint

    print(f"export: {result.export_dir}")
    print(report_hint(run_dir))
    return EXIT_OK


__all__ = ["certs_main", "server_main", "site_key_main", "site_main", "site_options", "site_parser"]
