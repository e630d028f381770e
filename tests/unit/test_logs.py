"""Logs: one JSON object per line, with a syslog priority prefix journald understands."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from paxmr import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("mapper-1", 3, stream=out, journald=True)
    yield out
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[tuple[int, dict[str, Any]]]:
    parsed = []
    for line in out.getvalue().splitlines():
        m = re.fullmatch(r"<([0-7])>(\{.*\})", line)
        assert m, line
        parsed.append((int(m[1]), json.loads(m[2])))
    return parsed


def test_info_line(stream: io.StringIO) -> None:
    logs.get().info("ready", socket="/run/x.sock")
    [(priority, obj)] = lines(stream)
    assert priority == 6
    assert obj["event"] == "ready"
    assert obj["node"] == 3
    assert obj["role"] == "mapper-1"
    assert obj["level"] == "info"
    assert obj["socket"] == "/run/x.sock"
    assert obj["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "priority"), [("warning", 4), ("error", 3), ("critical", 2), ("info", 6)]
)
def test_priorities(stream: io.StringIO, method: str, priority: int) -> None:
    getattr(logs.get(), method)("something")
    [(got, obj)] = lines(stream)
    assert got == priority
    assert obj["level"] == method


def test_debug_filtered_at_info(stream: io.StringIO) -> None:
    logs.get().debug("noise")
    assert stream.getvalue() == ""


def test_bound_context_and_non_ascii(stream: io.StringIO) -> None:
    logs.get(slot=7, ballot=[2, 1]).warning("stepped_down", word="Straße")
    [(priority, obj)] = lines(stream)
    assert priority == 4
    assert (obj["slot"], obj["ballot"], obj["word"]) == (7, [2, 1], "Straße")


def test_exception_is_one_line(stream: io.StringIO) -> None:
    try:
        int("bad\nthing")
    except ValueError:
        logs.get().exception("op_failed")
    [(priority, obj)] = lines(stream)
    assert priority == 3
    assert "ValueError" in str(obj["exception"])


def test_unserialisable_values_do_not_crash(stream: io.StringIO) -> None:
    logs.get().info("odd", value=object(), raw=b"\xff")
    [(_, obj)] = lines(stream)
    assert "object" in str(obj["value"])


def test_plain_json_lines_off_the_journal(tmp_path, monkeypatch) -> None:
    """A log file (a local cluster's) gets plain JSON lines that jq reads; the journal a prefix."""
    path = tmp_path / "prm.log"
    with path.open("w") as f:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not logs.to_journal(f)
        logs.configure("prm", 1, stream=f)
        logs.get().warning("leader_changed", leader=2)
        f.flush()
        st = path.stat()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.to_journal(f)
        logs.configure("prm", 1, stream=f)
        logs.get().warning("leader_changed", leader=3)
    structlog.reset_defaults()
    first, second = path.read_text().splitlines()
    assert json.loads(first)["leader"] == 2
    assert second.startswith("<4>")
    assert json.loads(second[3:])["leader"] == 3
