"""sd_notify(3) without python3-systemd: one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (e.g. ``"READY=1\\nSTATUS=…"``); return whether there was a socket to send to.

    Supports filesystem sockets and the abstract namespace (``@name``), as systemd does.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", environ["NOTIFY_SOCKET"], exc)
            return False
    return True
