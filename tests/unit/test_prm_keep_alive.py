"""prm.keep_alive: a client waiting on long work hears that it goes on, so it does not give up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paxmr.services.prm import keep_alive


def _run(work: Any, every: float) -> tuple[Any, list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []

    async def p(info: dict[str, Any]) -> None:
        lines.append(info)

    return asyncio.run(keep_alive(work, p, {"encoding": "f"}, every)), lines


async def _after(seconds: float, result: Any = 7) -> Any:
    await asyncio.sleep(seconds)
    if isinstance(result, Exception):
        raise result
    return result


def test_long_work_sends_its_line_while_it_runs_and_returns_its_result() -> None:
    result, lines = _run(_after(0.5), 0.05)
    assert result == 7
    assert lines
    assert all(line == {"encoding": "f"} for line in lines)


def test_quick_work_sends_nothing() -> None:
    assert _run(_after(0), 5.0) == (7, [])


def test_a_failure_of_the_work_is_raised() -> None:
    with pytest.raises(ValueError, match="bad tally"):
        _run(_after(0.2, ValueError("bad tally")), 0.05)


def test_the_work_is_cancelled_when_the_wait_is() -> None:
    async def main() -> bool:
        work = asyncio.ensure_future(_after(10))

        async def p(info: dict[str, Any]) -> None:
            pass

        waiting = asyncio.ensure_future(keep_alive(work, p, {}, 0.01))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return work.cancelled()

    assert asyncio.run(main())
