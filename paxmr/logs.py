"""Structured logs: one JSON object per line on stdout, prefixed for journald's priority."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities (RFC 5424); journald reads a leading "<N>" as the line's priority.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _render(_logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    line = json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))
    return f"<{_PRIORITY.get(method, 6)}>{line}"


def configure(role: str, node: int, *, level: str = "info", stream: TextIO | None = None) -> None:
    """Every log line carries ``node`` and ``role``; callers bind ``slot`` and ``ballot`` too."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(node=node, role=role)


def get(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return logger
