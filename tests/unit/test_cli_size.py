"""The CLI's Size parameter (gen-corpus --size, bench --size)."""

from __future__ import annotations

import click
import pytest

from paxmr.cli import Size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("10b", 10),
        ("64KiB", 64 << 10),
        ("64k", 64 << 10),
        ("64kb", 64_000),
        ("256MiB", 256 << 20),
        ("256m", 256 << 20),
        ("2MB", 2_000_000),
        ("1GiB", 1 << 30),
        ("1g", 1 << 30),
        ("3GB", 3_000_000_000),
        (" 2 MiB ", 2 << 20),
        ("2mib", 2 << 20),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert Size().convert(text, None, None) == value


def test_int_passes_through() -> None:
    assert Size().convert(123, None, None) == 123


@pytest.mark.parametrize("text", ["", "MiB", "1.5MiB", "-1", "12 parsecs", "1TiB", "0x10", "1e6"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not a size like"):
        Size().convert(text, None, None)
