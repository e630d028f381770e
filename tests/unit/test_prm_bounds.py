"""prm._Bounds: every replicate waiting on the PRM has an outcome by its bound, from one timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from paxmr import paxos
from paxmr.services import prm


def test_each_request_without_an_outcome_by_its_time_is_past_and_only_those(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three requests, bounds 0.05 s apart, the middle one answered before its bound: the
    other two are found past their bounds (each once), whatever came between them."""
    monkeypatch.setattr(prm, "BOUND_EVERY", 0.01)
    past: list[str] = []

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        futures = {rid: loop.create_future() for rid in "abc"}

        def on_past(rid: str, future: prm.Outcome) -> None:
            past.append(rid)
            future.set_result(paxos.Refused("timeout", "past"))

        bounds = prm._Bounds(on_past)
        now = time.monotonic()
        for i, (rid, future) in enumerate(futures.items()):
            bounds.add(now + 0.05 * (i + 1), rid, future)
        futures["b"].set_result(paxos.Committed(0, 0))
        await asyncio.wait_for(asyncio.gather(*futures.values()), 10)
        # A request that comes after the others were all answered arms the timer again.
        late = loop.create_future()
        bounds.add(time.monotonic() + 0.01, "d", late)
        await asyncio.wait_for(late, 10)
        return past

    assert asyncio.run(run()) == ["a", "c", "d"]
