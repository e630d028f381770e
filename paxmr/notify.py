"""systemd's notify protocol: READY=1, STOPPING=1 and the watchdog, over NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send one state line; False (and nothing sent) when not run under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(message.encode())
        except OSError:
            return False  # as sd_notify(3): a notification that cannot be sent is not fatal
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, or None when there is no watchdog for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
