"""The one polling loop of the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Bound for anything that converges on a loaded 2-core machine: generous, never a performance claim.
CONVERGE_S = 30.0


def wait_until(
    check: Callable[[], T | None],
    what: str | Callable[[], str],
    *,
    timeout: float = CONVERGE_S,
    interval: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` is called at least once, and once more after the deadline has passed before the
    wait fails. An exception in ``retry_on`` counts as "not yet". On timeout the test fails with
    ``what`` (a callable is asked then, so it can describe the last state seen) and the last
    value or exception.
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = check()
        except retry_on as exc:
            last: object = exc
        else:
            if value:
                return value
            last = value
        if expired:
            described = what() if callable(what) else what
            raise AssertionError(f"not within {timeout} s: {described} (last: {last!r})")
        time.sleep(interval)
