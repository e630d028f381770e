"""The whole pipeline as pure functions: split, count each range, write tallies, merge."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from paxmr.control import ControlError
from paxmr.services.mapper import intermediate_name
from paxmr.services.reducer import reduced_name
from paxmr.wordcount import WHITESPACE, count, tally
from paxmr.wordcount.split import split

pieces = st.one_of(
    st.binary(min_size=1, max_size=8),
    st.sampled_from(["a", "the", "café", "日本語", "🙂", "Straße"]).map(str.encode),
    st.sampled_from([bytes([c]) for c in WHITESPACE]),
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]),  # invalid UTF-8
)
texts = st.lists(pieces, max_size=100).map(b"".join)


@given(data=texts, mappers=st.integers(1, 5), chunk=st.integers(1, 32))
# A word in two tallies, every time: a merge that does not sum escaped one run of 100 examples.
@example(data=b"a the a\tthe\na", mappers=2, chunk=1)
def test_reduce_equals_counter_of_whole_text(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, mappers: int, chunk: int
) -> None:
    root = tmp_path_factory.mktemp("reduce")
    source = root / "some_file.txt"
    source.write_bytes(data)
    saved = count.CHUNK
    count.CHUNK = chunk
    try:
        outputs = []
        for i, r in enumerate(split(source, mappers), start=1):
            out = root / intermediate_name(source.name, i)
            tally.write(out, count.count_range(source, r.offset, r.size).items())
            outputs.append(out)
    finally:
        count.CHUNK = saved
    reduced = root / reduced_name([p.name for p in outputs])
    tally.write_sorted(reduced, tally.merge(tally.iterate(p) for p in outputs))
    assert reduced.name == "some_file.txt_reduced"
    assert tally.read(reduced) == Counter(data.split())


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["a_b.txt_I_1", "a_b.txt_I_2"], "a_b.txt_reduced"),
        (["x_I_1"], "x_reduced"),
        (["my_I_file_I_1", "my_I_file_I_12"], "my_I_file_reduced"),
        (["sub/dir_x/f_I_3"], "sub/dir_x/f_reduced"),
    ],
)
def test_reduced_name_with_underscores(files: list[str], expected: str) -> None:
    assert reduced_name(files) == expected


@pytest.mark.parametrize(
    "files",
    [["plain.txt"], ["f_I_"], ["f_I_x"], ["f_I_1", "g_I_2"], ["f_reduced"]],
)
def test_reduced_name_refuses_non_intermediates(files: list[str]) -> None:
    with pytest.raises(ControlError) as info:
        reduced_name(files)
    assert info.value.code == "bad_args"


def test_intermediate_name() -> None:
    assert intermediate_name("a_b_c.txt", 2) == "a_b_c.txt_I_2"


def test_pipeline_on_a_real_file(tmp_path: Path) -> None:
    data = ("word " * 1000 + "Straße\tcafé\n" * 500).encode() + b"\xff\xfe tail"
    source = tmp_path / "f"
    source.write_bytes(data)
    total: Counter[bytes] = Counter()
    for r in split(source, 3):
        total += count.count_range(source, r.offset, r.size)
    assert total == Counter(data.split())
