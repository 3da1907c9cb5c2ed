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
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.config.loader import ConfigError
from orchestrator.federated.launch import DEFAULT_PORT
from orchestrator.federated.processes import interrupted_exit_code, stop_children_on_signals
from orchestrator.federated.server_session import ServerOptions, server_plan
from orchestrator.federated.site import PORT_TAKEN, SiteOptions, refused_message, site_process
from orchestrator.progress import round_progress
from orchestrator.run_log import console_to_run_log

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
REFUSED = re.compile(r"Failed to activate SuperNode|Exit Code: 30[25]")


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def _stoppable(body: Callable[[], int]) -> int:
    """Run a command's body so that SIGINT, SIGTERM and SIGHUP stop it and every process it
    started (by PID); returns the body's exit code, or 128 + the signal number."""
    try:
        with stop_children_on_signals():
            return body()
    except KeyboardInterrupt as e:
        return interrupted_exit_code(e)


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
        _err(str(e))
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
        _err(str(e))
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
        _err(
            f"--resume RUN_DIR takes the config from RUN_DIR/config.yaml; drop {source!r} "
            "(key=value overrides are allowed, e.g. federation.num_rounds=10)"
        )
        return None
    run_dir = ns.resume.expanduser().absolute()
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        _err(f"{cfg} not found: --resume needs the directory of a run started by fedray")
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
    return _stoppable(lambda: _server(ns))


def _server(ns: argparse.Namespace) -> int:
    from orchestrator.cli_args import print_dry_run, privacy_plan
    from orchestrator.config.loader import to_yaml

    try:
        loaded = _server_job(ns)
    except ConfigError as e:
        _err(f"config error: {e}")
        return EXIT_USAGE
    if loaded is None:
        return EXIT_USAGE
    job, run_dir = loaded
    if ns.print_config:
        print(to_yaml(job), end="")
        return EXIT_OK
    if ns.insecure and ns.site_keys:
        _err("--site-keys needs TLS: Flower authenticates sites only over TLS; drop --insecure")
        return EXIT_USAGE
    opts = _server_options(ns)
    if ns.dry_run:
        print_dry_run(job, {**server_plan(job, opts, run_dir), "privacy": privacy_plan(job)})
        return EXIT_OK
    try:
        _check_before_start(job, opts)
    except ValueError as e:  # ConfigError, PortInUse, a bad --superlink address
        _err(f"config error: {e}" if isinstance(e, ConfigError) else str(e))
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
        _err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        _err(f"{e or 'interrupted'}; continue with: fedray server --resume {run_dir}")
        return interrupted_exit_code(e)
    except (RuntimeError, TimeoutError) as e:
        _err(str(e))
        return EXIT_FAILED
    print(f"run {result.run_id}: {result.status}\nrun directory: {run_dir}")
    if not result.ok:
        _err(
            f"the run did not complete ({result.status}); see {run_dir}/server/logs. "
            f"Continue from the last complete round with: fedray server --resume {run_dir}"
        )
        return EXIT_FAILED
    from orchestrator.report import report_hint

    print(f"export: {result.export_dir}")
    print(report_hint(run_dir))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# fedray site


def site_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedray site",
        description="Join a federation as a site: start a Flower SuperNode whose ClientApp "
        "trains on --data only. Only weight updates leave this machine.",
    )
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the SuperLink")
    p.add_argument("--data", required=True, type=Path, help="this site's labelled file")
    p.add_argument("--name", help="name in the server's round table (default: file stem)")
    p.add_argument("--key", type=Path, help="this site's private key (fedray site-key)")
    p.add_argument("--root-cert", type=Path, help="CA that signed the server certificate")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (logs a warning)")
    p.add_argument(
        "--port",
        type=int,
        help="local port (127.0.0.1) the SuperNode serves its ClientApps on; default: a free "
        "port, so several sites can run on one machine",
    )
    p.add_argument("--num-threads", type=int, help="torch threads for local training")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="FLWR_HOME, logs and the site's persistent state (e.g. SCAFFOLD's control "
        "variate, in STATE_DIR/site-state); give one to keep that state across site restarts "
        "(default: a temporary directory)",
    )
    p.add_argument(
        "--retry-refused-s",
        type=float,
        default=90.0,
        help="keep retrying for this long when the server refuses this site (a crashed site's "
        "old session stays online on the server for up to ~60 s); 0 = fail at once",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Flower/Ray/DeepSpeed/transformers info lines on the console "
        "(STATE_DIR/run.log always has them)",
    )
    return p


def site_options(ns: argparse.Namespace) -> SiteOptions:
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else p.expanduser().absolute()

    return SiteOptions(
        server=ns.server,
        data=ns.data.expanduser().absolute(),
        name=ns.name,
        key=absolute(ns.key),
        root_cert=absolute(ns.root_cert),
        insecure=ns.insecure,
        port=ns.port,
        num_threads=ns.num_threads,
    )


def _follow(path: Path, pos: int) -> int:
    """Print what was appended to ``path`` since byte ``pos``; return the new position."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return pos
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return pos + len(data)


def _run_site_once(opts: SiteOptions, log_path: Path, state_dir: Path) -> tuple[int | None, str]:
    """Start the SuperNode, echo its log until it exits, stop it by PID (also when a signal
    interrupts this). Returns (exit code, the last lines of its log)."""
    proc = site_process(opts, log_path, state_dir)
    pos = 0
    try:
        proc.start()
        print(f"site {opts.name or opts.data.stem}: {' '.join(proc.argv)}", flush=True)
        while proc.alive():
            pos = _follow(log_path, pos)
            time.sleep(0.5)
        _follow(log_path, pos)
    finally:
        proc.stop()
    return proc.returncode, proc.log_tail(60)


def site_main(argv: Sequence[str]) -> int:
    ns = site_parser().parse_args(list(argv))
    return _stoppable(lambda: _site(ns))


def _site(ns: argparse.Namespace) -> int:
    opts = site_options(ns)
    try:
        opts.validate()
    except (FileNotFoundError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    if not opts.insecure and opts.key is None:
        log.warning(
            "no --key: this site does not authenticate; a server with site authentication "
            "(the default) refuses it"
        )
    state_dir = (ns.state_dir or Path(tempfile.mkdtemp(prefix="fedray-site-"))).absolute()
    opts = replace(opts, state_dir=state_dir / "site-state")
    # The SuperNode's per-message INFO lines go to STATE_DIR/run.log only (its own log under
    # STATE_DIR/logs keeps them too); warnings and errors still reach the console.
    with console_to_run_log(state_dir, ns.verbose) as run_log:
        print(f"site log: {run_log}", flush=True)
        return _site_loop(ns, opts, state_dir)


def _site_loop(ns: argparse.Namespace, opts: SiteOptions, state_dir: Path) -> int:
    deadline = time.monotonic() + ns.retry_refused_s
    attempt, port_retries = 0, 3
    while True:
        attempt += 1
        log_path = state_dir / "logs" / f"supernode-{attempt}.log"
        try:
            code, tail = _run_site_once(opts, log_path, state_dir)
        except KeyboardInterrupt as e:
            _err(f"{e or 'interrupted'}: the SuperNode was stopped")
            return interrupted_exit_code(e)
        if code == 0:
            return EXIT_OK
        if opts.port is None and port_retries and PORT_TAKEN.search(tail):
            port_retries -= 1  # the free port we picked was taken before the SuperNode bound it
            continue
        if not REFUSED.search(tail):
            _err(f"flower-supernode exited with code {code}; log: {log_path}")
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            _err(refused_message(opts))
            return EXIT_FAILED
        print(
            "the server refused this site (key not registered yet, or this site's previous "
            "session is still marked online); retrying in 10 s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(10)


__all__ = ["certs_main", "server_main", "site_key_main", "site_main"]
