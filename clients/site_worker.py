"""A real site's warm worker: one long-lived process per SuperNode runs the site's handlers, so a
message no longer pays for importing torch and transformers and building the site again.

Flower's deployment engine starts a fresh ClientApp process for every message a site receives
(Flower 1.41 has no warm ClientApp for deployments). At a site that ``fedray site`` started
(its SuperNode runs with ``FEDRAY_SITE_WORKER=1``; orchestrator/processes/site.py) that process
stays thin: it imports Flower and this module, hands the message to the worker over a Unix
socket in a directory only this user can open, and returns the worker's reply. The first
message starts the worker, which pays the imports once; the worker exits within a second of the
SuperNode. Messages are still handled one at a time, exactly as in the ClientApp process
(clients/site_handlers.py): the same functions, the same context state, the same errors.

Anything that keeps a worker from serving (no Unix sockets, a socket directory someone else
owns, a worker that dies while starting) falls back to running the message in the ClientApp
process, as without the worker, with a warning. The wire format is in clients/worker_wire.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict

from clients.worker_wire import (
    PROTOCOL,
    Reply,
    Request,
    WireError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    recv_parts,
    send_parts,
)

log = logging.getLogger(__name__)

ENV_FLAG = "FEDRAY_SITE_WORKER"
"""Set to ``1`` in a SuperNode's environment: its ClientApp processes use a warm worker."""
START_TIMEOUT_S = 300.0
"""How long a ClientApp waits for a new worker to finish its imports (a slow, busy machine)."""
OWNER_POLL_S = 1.0
"""How often an idle worker checks that its SuperNode still runs."""

SOCKET_DIR_MAX = 80
"""Longest socket directory used: a Unix socket's whole path must fit in 107 bytes."""

CODE_ROOT = Path(__file__).resolve().parents[1]
"""The source root this module was loaded from; a worker runs the same code as its ClientApp."""


class SiteWorkerError(RuntimeError):
    """The worker ran the message and it failed (the worker's traceback is in the message), or
    the worker went away mid-message."""


def enabled() -> bool:
    return os.environ.get(ENV_FLAG) == "1" and hasattr(socket, "AF_UNIX")


def socket_dir() -> Path:
    """``$TMPDIR/fedray-site-worker-UID``, mode 0700 (a Unix socket path must stay under ~100
    bytes, so not the site's state directory). One another user owns or can open is refused."""
    d = Path(tempfile.gettempdir()) / f"fedray-site-worker-{os.getuid()}"
    if len(str(d)) > SOCKET_DIR_MAX and Path("/tmp").is_dir():  # a deep TMPDIR: /tmp
        d = Path("/tmp") / d.name
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{d} is not a directory that only this user can open (mode 0700, owned by uid "
            f"{os.getuid()}); remove it and the next message recreates it"
        )
    return d


def owner_tag(pid: int) -> str:
    """The owner process (the SuperNode) by PID and start time: a reused PID is someone else."""
    import psutil

    return f"{pid}-{psutil.Process(pid).create_time()}"


def socket_path(owner: int) -> Path:
    """One worker per SuperNode, per code location and per protocol version."""
    key = f"{CODE_ROOT}|{owner_tag(owner)}|{PROTOCOL}"
    return socket_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


def owner_alive(owner: int, tag: str) -> bool:
    import psutil

    try:
        return owner_tag(owner) == tag
    except psutil.Error:
        return False


# ---- the ClientApp side ------------------------------------------------------------------------


def relay(handler: str, msg: Message, context: Context, owner: int | None = None) -> Message | None:
    """Run ``handler`` for ``msg`` in the worker of ``owner`` (default: the SuperNode that
    started this ClientApp process), starting it if needed; the reply, or None when no worker
    can serve (the caller then runs the handler itself)."""
    owner = owner or os.getppid()
    try:
        path = socket_path(owner)
        sock = _connect(path) or _start(path, owner)
    except Exception as e:  # OSError, PermissionError, psutil.Error: serve in-process instead
        log.warning("site worker unavailable (%s); handling this message in-process", e)
        return None
    if sock is None:
        return None
    request = Request(
        handler=handler,
        run_id=int(context.run_id),
        node_id=int(context.node_id),
        message_type=msg.metadata.message_type,
        node_config=dict(context.node_config),
        run_config=dict(context.run_config),
        content=msg.content,
        state=context.state,
        overhead=message_overhead(),
    )
    with sock:
        try:
            send_parts(sock, encode_request(request))
            reply = decode_reply(recv_parts(sock, 3))
        except (OSError, WireError) as e:
            raise SiteWorkerError(f"the site worker went away mid-message: {e}") from e
    if reply.error is not None:
        raise SiteWorkerError(f"the site worker's handler failed:\n{reply.error}")
    if reply.content is None or reply.state is None:
        raise SiteWorkerError("the site worker replied without content")
    _replace_state(context, reply.state)
    return Message(content=reply.content, reply_to=msg)


def _replace_state(context: Context, state: RecordDict) -> None:
    for key in list(context.state.keys()):
        del context.state[key]
    for key, record in state.items():
        context.state[key] = record


def _connect(path: Path) -> socket.socket | None:
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # a stale socket from a worker that is gone
        sock.close()
        return None
    return sock


def _start(path: Path, owner: int) -> socket.socket | None:
    """Start the worker (one at a time: a lock file beside the socket) and connect to it."""
    import fcntl  # POSIX only, like the Unix socket (``enabled``); the ClientApp imports this module

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if sock := _connect(path):
            return sock  # another ClientApp started it while this one waited
        path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != ENV_FLAG}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        log_path = path.with_suffix(".log")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clients.site_worker", str(path), str(owner)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives this ClientApp process; watches the SuperNode
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while (sock := _connect(path)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                tail = log_path.read_text(errors="replace")[-2000:]
                log.warning(
                    "the site worker did not start; handling in-process. Its log:\n%s", tail
                )
                return None
            time.sleep(0.1)
        return sock


# ---- the worker side ---------------------------------------------------------------------------

Handler = Callable[..., Message]
TIMED = ("train", "evaluate")
"""Handlers that report the message's overhead (``overhead=`` keyword)."""


def message_overhead() -> dict[str, float] | None:
    """What this message has cost so far in the process Flower started for it (``s``: since
    the process started; ``cpu-s``: its CPU time), or None outside such a process (simulation,
    tests, a debugger), where a process's age says nothing about one message."""
    if Path(sys.argv[0]).name != "flwr-clientapp":
        return None
    import psutil

    cpu = os.times()
    return {
        "s": max(0.0, time.time() - psutil.Process().create_time()),
        "cpu-s": cpu.user + cpu.system,
    }


def handlers() -> dict[str, Handler]:
    """The site's handlers by name: importing them is what the worker is for."""
    from clients import site_handlers as h

    return {
        "train": h.train,
        "evaluate": h.evaluate_,
        "secagg_share": h.secagg_share,
        "secagg_mask": h.secagg_mask,
        "secagg_unmask": h.secagg_unmask,
    }


def run_request(req: Request, table: dict[str, Handler]) -> Reply:
    """One message, as the ClientApp process would have run it; an exception becomes an error
    reply (the ClientApp raises it, so Flower reports it as it would an in-process failure)."""
    from flwr.supercore.task_identity import TaskIdentity

    # Messages take their run and node ids from the process's task identity, which Flower's
    # ClientApp runtime sets; here the worker stands in for that runtime, message by message.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = req.run_id, req.node_id, 0
    context = Context(
        run_id=req.run_id,
        node_id=req.node_id,
        node_config=req.node_config,
        state=req.state,
        run_config=req.run_config,
    )
    msg = Message(content=req.content, dst_node_id=req.node_id, message_type=req.message_type)
    timed = {"overhead": req.overhead} if req.handler in TIMED else {}
    try:
        reply = table[req.handler](msg, context, **timed)
    except Exception as e:
        return Reply(None, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return Reply(reply.content, context.state)


def serve(path: Path, owner: int) -> int:
    tag = owner_tag(owner)
    # A SuperNode stopped by fedray takes its descendants down with SIGTERM: leave cleanly.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    table = handlers()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(4)
    server.settimeout(OWNER_POLL_S)
    print(f"site worker {os.getpid()} serving {path} for pid {owner}", flush=True)
    try:
        while owner_alive(owner, tag):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                _serve_one(conn, table)
    finally:
        # Its owner is gone or stopping it, so no ClientApp will look for this worker again (a
        # worker that dies on start never gets here: its log stays for the ClientApp to show).
        server.close()
        for leftover in (path, path.with_suffix(".lock"), path.with_suffix(".log")):
            leftover.unlink(missing_ok=True)
    return 0


def _serve_one(conn: socket.socket, table: dict[str, Handler]) -> None:
    try:
        req = decode_request(recv_parts(conn, 3))
    except WireError as e:
        reply = Reply(None, None, f"bad request: {e}")
    else:
        reply = run_request(req, table)
    with contextlib.suppress(OSError):  # the ClientApp process was stopped meanwhile
        send_parts(conn, encode_reply(reply))


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]), int(sys.argv[2])))
