"""The control protocol: JSON Lines over a Unix socket, shared by every service and the CLI.

Request ``{"op": NAME, "args": {...}}``; reply ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code": ..., "message": ...}}``. A long operation may first send any
number of ``{"progress": {...}}`` lines. One connection may carry many requests, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar, overload

from pydantic import BaseModel, ConfigDict, ValidationError

from paxmr import logs
from paxmr.paths import PathRefused

Progress = Callable[[dict[str, Any]], Awaitable[None]]
R = TypeVar("R", bound="Result")


class Args(BaseModel):
    """Base for an operation's arguments: unknown keys are an error, like everywhere else."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(Args):
    pass


class Result(BaseModel):
    """Base for an operation's typed result (paxmr/replies.py): sent as its JSON object
    (``model_dump``), so a handler's return annotation is the reply's schema, and validated by
    the client (``call(..., reply=Model)``). Unknown keys are ignored, not refused: a newer
    service may send more than an older client knows (a rolling deploy), and mypy already
    refuses an unknown field where a service builds a result."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ControlError(Exception):
    """An error reply: a stable machine-readable code and a message for people."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The request this error answers, for a client to retry with (replicate).
        self.request_id = request_id


@dataclass(frozen=True)
class Op:
    args: type[Args]
    run: Callable[[Any, Progress], Awaitable[Any]]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _error(code: str, message: str, request_id: str | None = None) -> bytes:
    message = printable(message)  # it may quote a client's text; it ends up on a terminal
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return _line({"ok": False, "error": error})


# C0 and C1 controls and DEL (terminal escape sequences start with ESC or CSI) and the
# bidirectional overrides that reorder what a terminal shows.
_UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def printable(text: str) -> str:
    """``text`` with control characters written as backslash escapes, for a terminal."""
    return text.translate(_UNPRINTABLE)


class Server:
    """Serves a table of operations on a listening Unix socket.

    At most ``max_connections`` connections are kept (so a flood of clients cannot exhaust the
    service's file descriptors): past that, a new client takes the place of the connection that
    has waited longest for its next request, or gets a ``busy`` reply when every connection is
    running a request. A connection that sends no complete request for ``idle_timeout`` seconds
    is closed.
    """

    def __init__(
        self,
        ops: dict[str, Op],
        *,
        line_limit: int,
        max_connections: int = 256,
        idle_timeout: float = 60.0,
    ) -> None:
        self.ops = ops
        self.line_limit = line_limit
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.active: set[asyncio.StreamWriter] = set()
        # Waiting for a request since (loop time), oldest first.
        self.idle: dict[asyncio.StreamWriter, float] = {}
        # One timer per connection closes it once idle too long (_expire): moved on only when it
        # fires, not armed and cancelled around every request (15-25 us each, a twentieth of
        # the PRM's CPU per commit with 64 replicates in flight).
        self._alarms: dict[asyncio.StreamWriter, asyncio.TimerHandle] = {}
        self.log = logs.get()

    async def start(self, sock: socket.socket) -> asyncio.Server:
        return await asyncio.start_unix_server(self._client, sock=sock, limit=self.line_limit)

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        if len(self.active) >= self.max_connections:
            if not self.idle:
                return False
            oldest = next(iter(self.idle))
            self._drop(oldest)
            oldest.transport.abort()
        self.active.add(writer)
        return True

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self.active.discard(writer)
        self.idle.pop(writer, None)
        if (alarm := self._alarms.pop(writer, None)) is not None:
            alarm.cancel()

    def _watch(self, writer: asyncio.StreamWriter, since: float) -> None:
        """Note that `writer` waits for a request from `since`, and see that it is closed if
        it waits idle_timeout seconds."""
        self.idle[writer] = since
        if writer not in self._alarms:
            loop = asyncio.get_running_loop()
            self._alarms[writer] = loop.call_at(since + self.idle_timeout, self._expire, writer)

    def _expire(self, writer: asyncio.StreamWriter) -> None:
        del self._alarms[writer]
        since = self.idle.get(writer)
        if since is None:
            return  # running a request: watched again when it waits for the next (_watch)
        due = since + self.idle_timeout
        loop = asyncio.get_running_loop()
        if loop.time() < due:  # it has run requests since the timer was armed
            self._alarms[writer] = loop.call_at(due, self._expire, writer)
        else:
            writer.transport.abort()  # its readline ends as at the end of the stream

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            self.log.warning("control_busy", connections=len(self.active))
            writer.write(_error("busy", f"{len(self.active)} connections are busy; retry later"))
            writer.close()
            return
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._watch(writer, loop.time())
                try:
                    raw = await reader.readline()
                except ValueError:  # the line outgrew the limit; the stream cannot resync
                    writer.write(_error("too_large", f"request over {self.line_limit} bytes"))
                    await writer.drain()
                    return
                finally:
                    self.idle.pop(writer, None)
                if not raw or writer.transport.is_closing():
                    return  # ended, or idle too long (a request line that never ends too)
                writer.write(await self._answer(raw, writer))
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            self._drop(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _answer(self, raw: bytes, writer: asyncio.StreamWriter) -> bytes:
        request = _request(raw)
        if isinstance(request, bytes):
            return request  # an error reply
        name = request["op"]
        op = self.ops.get(name)
        if op is None:
            return _error(
                "unknown_op", f"unknown op {name!r}; known: {', '.join(sorted(self.ops))}"
            )
        try:
            args = op.args.model_validate(request.get("args") or {})
        except ValidationError as exc:
            return _error("bad_args", f"{name}: {_problems(exc, 'args')}")

        async def progress(info: dict[str, Any]) -> None:
            writer.write(_line({"progress": info}))
            await writer.drain()

        try:
            result = await op.run(args, progress)
        except ControlError as exc:
            return _error(exc.code, exc.message, exc.request_id)
        except PathRefused as exc:
            return _error("path_refused", str(exc))
        except FileNotFoundError as exc:
            return _error("not_found", f"{exc.strerror}: {exc.filename}")
        except Exception:
            self.log.exception("op_failed", op=name)
            return _error("internal", f"{name} failed unexpectedly; see the service's log")
        if isinstance(result, Result):
            result = result.model_dump(mode="json")
        return _line({"ok": True, "result": result})


def _problems(exc: ValidationError, whole: str) -> str:
    """What a validation found, one "field: why" each (``whole`` names the value itself)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in exc.errors()
    )


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _request(raw: bytes) -> dict[str, Any] | bytes:
    """The request in ``raw``, or the error reply it gets."""
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        return _error("bad_request", "request is not JSON")
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return _error("bad_request", 'request must be an object with a string "op"')
    try:
        # A lone surrogate (\\udcff) passes JSON but is no Unicode text. In an ASCII line it can
        # only come from an escape: only a line that is not ASCII or has one is encoded again.
        if not raw.isascii() or _SURROGATE_ESCAPE.search(raw):
            _line(request)
    except UnicodeEncodeError:
        return _error(
            "bad_request",
            "request holds text that is not valid Unicode (a file name that is not UTF-8?)",
        )
    return request


# --- client --------------------------------------------------------------------------------------


class ServiceDown(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(f"service not running: nothing listens on {path}")


class PermissionDenied(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(f"permission denied on {path} (are you in the paxmr-admin group?)")


# The error codes after which the same request may be sent again, with the request id the error
# names if it names one: no quorum, and every outcome not known yet (the PRM's interrupted: the
# node stopped meanwhile; busy; jobs' unknown_outcome: the PRM went away before it answered).
# `paxmr` exits 5 for each: one code tells a script "retry".
RETRY_LATER = frozenset({"no_quorum", "interrupted", "busy", "unknown_outcome"})


class RemoteError(Exception):
    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def _connect(path: Path, timeout: float | None) -> socket.socket:
    # A full listen backlog (a burst of clients) answers EAGAIN at once: wait a little and try
    # again, within the timeout, instead of failing while the service catches up.
    deadline = time.monotonic() + (timeout if timeout is not None else 30.0)
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            if time.monotonic() + pause > deadline:
                raise TimeoutError(f"{path}: the service's backlog stayed full") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        except OSError as exc:
            sock.close()
            if isinstance(exc, PermissionError):
                raise PermissionDenied(path) from exc
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise ServiceDown(path) from exc
            raise
        return sock


class Client:
    """One connection for many requests, one at a time."""

    def __init__(self, path: Path, timeout: float | None = 30.0) -> None:
        self.path = path
        self._sock = _connect(path, timeout)
        self._stream = self._sock.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()
        self._sock.close()

    def abort(self) -> None:
        """Hang up from another thread: a call blocked on this connection returns at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    @overload
    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        reply: type[R],
    ) -> R: ...
    @overload
    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        reply: None = None,
    ) -> Any: ...
    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        reply: type[Result] | None = None,
    ) -> Any:
        """One request, one result (validated as ``reply``, if given: a reply this version does
        not understand is a ``bad_reply`` error); progress lines go to ``on_progress``."""
        result = self._call(op, args, on_progress)
        if reply is None:
            return result
        try:
            return reply.model_validate(result)
        except ValidationError as exc:
            raise RemoteError(
                "bad_reply",
                f"{self.path} answered {op} with a reply this paxmr does not understand"
                f" (another version?): {_problems(exc, 'result')}",
            ) from None

    def _call(
        self,
        op: str,
        args: dict[str, Any] | None,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> Any:
        # ASCII JSON: text that is not valid Unicode (a file name that is not UTF-8, taken from
        # argv as lone surrogates) still goes out, and the service answers with a clear error.
        request = json.dumps({"op": op, "args": args or {}}, separators=(",", ":"))
        # A service may refuse a client (busy) before reading its request, and hang up: the
        # refusal it wrote is still to be read below, and no line at all is "disconnected".
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._sock.sendall(request.encode() + b"\n")
        while True:
            try:
                raw = self._stream.readline()
            except ConnectionResetError:  # closed with our request unread: no line either
                raw = b""
            if not raw:
                raise RemoteError("disconnected", f"{self.path} closed the connection")
            try:
                reply = json.loads(raw)
            except ValueError:
                raise RemoteError(
                    "bad_reply", f"{self.path} answered with something not JSON"
                ) from None
            if "progress" in reply:
                if on_progress is not None:
                    on_progress(reply["progress"])
                continue
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error") or {}
            rid = error.get("request_id")
            raise RemoteError(
                str(error.get("code", "error")),
                str(error.get("message", reply)),
                rid if isinstance(rid, str) else None,
            )


@overload
def call(
    path: Path,
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float | None = 30.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    reply: type[R],
) -> R: ...
@overload
def call(
    path: Path,
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float | None = 30.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    reply: None = None,
) -> Any: ...
def call(
    path: Path,
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float | None = 30.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    reply: type[Result] | None = None,
) -> Any:
    """One request on a connection of its own."""
    with Client(path, timeout) as client:
        return client.call(op, args, on_progress, reply=reply)
