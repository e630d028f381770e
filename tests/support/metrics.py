"""The PRM's Prometheus text, read into numbers."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"([a-z_]+(?:\{[^}]*\})?) (\S+)")


def parse(text: str) -> dict[str, float]:
    """Each sample line's value by its name and labels (``name{label="x"}``); comments skipped."""
    values = {}
    for line in text.splitlines():
        m = _SAMPLE.fullmatch(line)
        if m:
            values[m[1]] = float(m[2])
    return values
