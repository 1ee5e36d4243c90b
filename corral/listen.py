"""The listening socket of a node or a runner, bound before anything else starts: a process that
cannot serve must not open its data, adopt sandboxes or register anywhere first."""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The address cannot be bound; the message is one line for the user."""


def bind(host: str, port: int, what: str) -> socket.socket:
    """Bind and listen on host:port; `what` names the process a taken port probably belongs to."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"could not listen on {host}:{port}: address in use (is another {what} there?)") from None
        raise ListenError(f"could not listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
