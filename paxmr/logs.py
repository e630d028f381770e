"""Structured logs: one JSON object per line on stdout, prefixed for journald's priority.

The ``<N>`` prefix is written only when stdout is the journal (systemd's ``JOURNAL_STREAM``
names it); anywhere else (a local cluster's log files, a terminal) every line is plain JSON,
readable by ``jq``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities (RFC 5424); journald reads a leading "<N>" as the line's priority.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _render(_logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    line = json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))
    return f"<{_PRIORITY.get(method, 6)}>{line}"


def _render_plain(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    return json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))


def to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is systemd's journal stream (``JOURNAL_STREAM=dev:inode``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure(
    role: str,
    node: int,
    *,
    level: str = "info",
    stream: TextIO | None = None,
    journald: bool | None = None,
) -> None:
    """Every log line carries ``node`` and ``role``; callers bind ``slot`` and ``ballot`` too.

    ``journald``: prefix lines with their syslog priority; by default when stdout is the journal.
    """
    out = stream or sys.stdout
    if journald is None:
        journald = to_journal(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render if journald else _render_plain,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(node=node, role=role)


def get(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return logger
