"""``fedray site``: argument parsing and the SuperNode supervision loop (retry while the
server is not up yet or the site's key is not registered, pick another port when one is taken).
The SuperNode itself is started by :mod:`orchestrator.processes.site`.

    fedray site --server fl.example.org:9092 --data /data/a.csv --key keys/hospital-a \\
        --root-cert certs/ca.pem

Exit codes and error lines as every command (:mod:`orchestrator.commands.common`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.commands.common import (
    EXIT_OK,
    config_error,
    failed,
    interrupted,
    parse,
    stoppable,
)

if TYPE_CHECKING:
    from orchestrator.processes.site import SiteOptions

log = logging.getLogger(__name__)

REFUSED = re.compile(r"Failed to activate SuperNode|Exit Code: 30[25]")


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
        "--no-warm-worker",
        dest="warm_worker",
        action="store_false",
        help="run each message in the fresh process Flower starts for it (imports torch and "
        "transformers every time) instead of this site's warm worker (clients/site_worker.py)",
    )
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
    from orchestrator.processes.site import SiteOptions

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
        warm_worker=ns.warm_worker,
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
    from orchestrator.processes.site import site_process

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
    ns = parse(site_parser(), argv)
    return stoppable(lambda: _site(ns))


def _site(ns: argparse.Namespace) -> int:
    opts = site_options(ns)
    try:
        opts.validate()
    except (FileNotFoundError, ValueError) as e:
        return config_error(e)
    if not opts.insecure and opts.key is None:
        log.warning(
            "no --key: this site does not authenticate; a server with site authentication "
            "(the default) refuses it"
        )
    state_dir = (ns.state_dir or Path(tempfile.mkdtemp(prefix="fedray-site-"))).absolute()
    opts = replace(opts, state_dir=state_dir / "site-state")
    from orchestrator.run_log import console_to_run_log

    # The SuperNode's per-message INFO lines go to STATE_DIR/run.log only (its own log under
    # STATE_DIR/logs keeps them too); warnings and errors still reach the console.
    with console_to_run_log(state_dir, ns.verbose) as run_log:
        print(f"site log: {run_log}", flush=True)
        return _site_loop(ns, opts, state_dir)


def _site_loop(ns: argparse.Namespace, opts: SiteOptions, state_dir: Path) -> int:
    from orchestrator.processes.site import PORT_TAKEN, refused_message

    deadline = time.monotonic() + ns.retry_refused_s
    attempt, port_retries = 0, 3
    while True:
        attempt += 1
        log_path = state_dir / "logs" / f"supernode-{attempt}.log"
        try:
            code, tail = _run_site_once(opts, log_path, state_dir)
        except KeyboardInterrupt as e:
            return interrupted(e, "the SuperNode was stopped")
        if code == 0:
            return EXIT_OK
        if opts.port is None and port_retries and PORT_TAKEN.search(tail):
            port_retries -= 1  # the free port we picked was taken before the SuperNode bound it
            continue
        if not REFUSED.search(tail):
            return failed(f"flower-supernode exited with code {code}; log: {log_path}")
        if time.monotonic() >= deadline:
            return failed(refused_message(opts))
        print(
            "the server refused this site (key not registered yet, or this site's previous "
            "session is still marked online); retrying in 10 s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(10)
