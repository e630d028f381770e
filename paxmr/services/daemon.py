"""What every service shares: its listening socket, readiness, watchdog and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from paxmr import control, logs, notify
from paxmr.settings import Settings

_SD_LISTEN_FDS_START = 3


def listen(path: Path) -> socket.socket:
    """The socket systemd passed us (socket activation), else one bound here at ``path``."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")):
        sock = socket.socket(fileno=_SD_LISTEN_FDS_START)
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)  # not for our children
        return sock
    path.parent.mkdir(parents=True, exist_ok=True)
    if _answers(path):
        raise RuntimeError(
            f"another process listens on {path} (this service already runs?): nothing was"
            " changed, that one goes on"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a killed process
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o660)
    sock.listen(64)
    return sock


def _answers(path: Path) -> bool:
    """Whether a process listens on the socket at `path`: unlinked, its socket would be
    unreachable while it runs on."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False  # none there, or a stale one from a killed process
    except TimeoutError:
        return True  # its backlog is full: alive, and busy
    finally:
        probe.close()
    return True


async def _watchdog(interval: float) -> None:
    while True:
        notify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(
    settings: Settings,
    ops: dict[str, control.Op],
    socket_path: Path,
    *,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> None:
    """Serve ``ops`` until SIGTERM or SIGINT; READY=1 goes out once the socket is listening."""
    log = logs.get()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    limits = settings.limits
    server = await control.Server(
        ops,
        line_limit=limits.control_line_bytes,
        max_connections=limits.control_connections,
        idle_timeout=limits.control_idle_seconds,
    ).start(listen(socket_path))
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(job()) for job in background]
    interval = notify.watchdog_interval()
    if interval is not None:
        tasks.append(asyncio.create_task(_watchdog(interval)))
    notify.notify("READY=1")
    log.info("ready", socket=str(socket_path), pid=os.getpid())

    done = asyncio.create_task(stop.wait())
    finished, _ = await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in finished if t is not done and t.exception() is not None]
    notify.notify("STOPPING=1")
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        exc = failed[0].exception()
        log.error("background_task_failed", error=repr(exc))
        raise SystemExit(1) from exc
    log.info("stopped")
