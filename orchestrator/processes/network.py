"""Ports and TCP probes: the one place fedray binds or dials a socket to ask a question.

``fedray server`` / ``fedray site`` check their ports before starting anything, ``fedray doctor``
reports on them, tests and the embedded Ray pick free ports: all of them through these helpers.
"""

from __future__ import annotations

import socket


class PortInUse(ValueError):
    """A port fedray was told to bind is taken (a usage error: exit code 2, nothing started)."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_error(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be bound now, as a server would (SO_REUSEADDR, so a port left
    in TIME_WAIT counts as free, one with a listener as taken); else the ``OSError`` the bind
    raised (``errno`` EADDRINUSE, EACCES, ...)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (see :func:`bind_error`)."""
    return bind_error(host, port) is None


def check_port_free(host: str, port: int, flag: str, hint: str) -> None:
    """Raise :class:`PortInUse` (one line, naming ``flag`` and a fix) if ``host:port`` is taken."""
    if not port_free(host, port):
        raise PortInUse(f"{flag} {port}: port {port} on {host} is already in use; {hint}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that can be bound on ``host`` right now (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_probe(host: str, port: int, timeout: float = 0.5) -> str | None:
    """None if something accepts a TCP connection at ``host:port`` within ``timeout`` s, else
    why not (one line)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"cannot resolve {host!r} ({e.strerror})"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return "connection refused (nothing listening)"
    except OSError as e:
        return e.strerror or str(e)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` (see :func:`tcp_probe`)."""
    return tcp_probe(host, port, timeout) is None


__all__ = [
    "PortInUse",
    "bind_error",
    "check_port_free",
    "free_port",
    "port_free",
    "port_open",
    "tcp_probe",
]
