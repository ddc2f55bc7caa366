"""``state_dir/gateway.pid``: how kruxosctl, which writes the gateway's database directly, tells the
running gateway to look at what it changed.

The gateway writes its PID there when it listens and removes it when it stops. kruxosctl sends SIGHUP
("reload the policy") or SIGUSR1 ("the database changed": an approval was decided, a key revoked). A
signal that cannot be sent loses nothing: the gateway also looks on its own, periodically.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PIDFILE = "gateway.pid"


def write(state_dir: Path) -> Path:
    """Write ``state_dir/gateway.pid`` (atomically) with this process's PID."""
    path = state_dir / PIDFILE
    tmp = path.with_name(f".{PIDFILE}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def remove(path: Path) -> None:
    """Remove the pidfile if it is still ours (a newer gateway may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def signal_gateway(state_dir: Path, signum: signal.Signals) -> bool:
    """Send ``signum`` to the gateway whose PID is in ``state_dir/gateway.pid``; whether it was sent."""
    try:
        pid = int((state_dir / PIDFILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if b"kruxos" not in cmdline:  # a stale pidfile whose PID now belongs to something else
        return False
    try:
        os.kill(pid, signum)
    except OSError:
        return False
    return True
