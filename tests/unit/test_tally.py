"""The tally file format: exact round trip, strict validation, atomic writes."""

from __future__ import annotations

import io
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.wordcount import WHITESPACE, tally

WS = frozenset(WHITESPACE)
words = st.binary(min_size=1, max_size=20).filter(WS.isdisjoint)
counts = st.dictionaries(words, st.integers(1, 10**30), max_size=50)


@given(counts=counts)
def test_round_trip_any_words(
    tmp_path_factory: pytest.TempPathFactory, counts: dict[bytes, int]
) -> None:
    path = tmp_path_factory.mktemp("tally") / "t"
    tally.write(path, counts.items())
    assert tally.read(path) == counts
    assert list(tally.iterate(path)) == sorted(counts.items())


def test_format_is_documented_text(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tally.write(path, [(b"b", 2), ("é".encode(), 1), (b"\xff\xfe", 3), (b"a", 10)])
    assert path.read_bytes() == (b"paxmr-tally 1\na\t10\nb\t2\n\xc3\xa9\t1\n\xff\xfe\t3\n")


def test_empty_tally(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tally.write(path, [])
    assert path.read_bytes() == tally.HEADER
    assert tally.read(path) == {}


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        (b"nope\n", 1, "not a paxmr tally"),
        (b"", 1, "not a paxmr tally"),
        (b"paxmr-tally 2\n", 1, "not a paxmr tally"),
        (b"paxmr-tally 1\na 1\n", 2, "expected <word>TAB<count>"),
        (b"paxmr-tally 1\na\t1", 2, "expected <word>TAB<count>"),  # no final newline
        (b"paxmr-tally 1\n\t1\n", 2, "expected <word>TAB<count>"),  # empty word
        (b"paxmr-tally 1\na\tb\t1\n", 2, "positive integer"),
        (b"paxmr-tally 1\na\t1\nb\t0\n", 3, "positive integer"),
        (b"paxmr-tally 1\na\t1\nb\t-1\n", 3, "positive integer"),
        (b"paxmr-tally 1\na\t1\nb\t007\n", 3, "positive integer"),
        (b"paxmr-tally 1\na\t1\nb\t\n", 3, "positive integer"),
        (b"paxmr-tally 1\na\t1\nb\t\xd9\xa3\n", 3, "positive integer"),  # Arabic-Indic 3
        (b"paxmr-tally 1\nb\t1\na\t1\n", 3, "strictly increasing"),
        (b"paxmr-tally 1\na\t1\na\t1\n", 3, "strictly increasing"),
    ],
)
def test_invalid_tally_names_file_and_line(
    tmp_path: Path, body: bytes, line: int, what: str
) -> None:
    path = tmp_path / "bad_I_1"
    path.write_bytes(body)
    with pytest.raises(tally.TallyError) as info:
        tally.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: " if line > 1 else f"{path}: ")
    assert what in message


def no_temp_files(directory: Path) -> bool:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name) == []


def test_write_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tally.write(path, [(b"old", 1)])
    tally.write(path, [(b"new", 2)])
    assert tally.read(path) == {b"new": 2}
    assert no_temp_files(tmp_path)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tally.write(path, [(b"old", 1)])
    before = path.read_bytes()

    def items():  # fails half-way through, after some lines were written
        yield b"a", 1
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        tally.write_sorted(path, items())
    assert path.read_bytes() == before
    assert no_temp_files(tmp_path)


def test_merge_of_a_bad_tally_keeps_old_output(tmp_path: Path) -> None:
    good, bad, out = tmp_path / "f_I_1", tmp_path / "f_I_2", tmp_path / "f_reduced"
    tally.write(good, [(b"a", 1), (b"z", 1)])
    bad.write_bytes(tally.HEADER + b"b\t1\nbroken line\n")
    tally.write(out, [(b"previous", 7)])
    with pytest.raises(tally.TallyError, match=rf"{bad}:3: "):
        tally.write_sorted(out, tally.merge([tally.iterate(good), tally.iterate(bad)]))
    assert tally.read(out) == {b"previous": 7}
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    "items",
    [
        [(b"two words", 1)],
        [(b"line\nbreak", 1)],
        [(b"tab\tinside", 1)],
        [(b"", 1)],
        [(b"zero", 0)],
        [(b"negative", -3)],
    ],
    ids=["space", "newline", "tab", "empty-word", "zero-count", "negative-count"],
)
def test_write_refuses_what_read_would_reject(
    tmp_path: Path, items: list[tuple[bytes, int]]
) -> None:
    path = tmp_path / "t"
    tally.write(path, [(b"old", 1)])
    with pytest.raises(ValueError):
        tally.write(path, items)
    assert tally.read(path) == {b"old": 1}
    assert no_temp_files(tmp_path)


def test_write_with_wrong_types_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tally.write(path, [(b"old", 1)])
    with pytest.raises(TypeError):
        tally.write(path, [(b"a", "1")])  # type: ignore[list-item]
    assert tally.read(path) == {b"old": 1}
    assert no_temp_files(tmp_path)


@given(streams=st.lists(counts, max_size=5))
def test_merge_is_counter_sum(streams: list[dict[bytes, int]]) -> None:
    merged = list(tally.merge(sorted(s.items()) for s in streams))
    expected: Counter[bytes] = Counter()
    for s in streams:
        expected.update(s)
    assert merged == sorted(expected.items())


def test_concurrent_writes_of_one_tally_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "f_I_1"
    first_open, second_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_items():
        yield b"a", 1
        first_open.set()
        second_done.wait(10)
        yield b"b", 1

    def first() -> None:
        try:
            tally.write_sorted(path, slow_items())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_open.wait(10)
    tally.write_sorted(path, [(b"x", 5)])
    second_done.set()
    thread.join(10)
    assert errors == []
    # Each write is atomic: the file is one whole tally, the one renamed last.
    assert tally.read(path) == {b"a": 1, b"b": 1}
    assert no_temp_files(tmp_path)


def _parsed(parse: object) -> object:
    """What a parse returns, or the error it raises (message included)."""
    try:
        return parse()  # type: ignore[operator]
    except tally.TallyError as exc:
        return str(exc)


# Tally-like text: valid lines, and lines broken in every way the format refuses.
_pieces = st.sampled_from([b"a", b"b", b"\xff", b"\t", b"\n", b" ", b"0", b"1", b"9", b"\x0b"])
_fields = st.tuples(
    st.sampled_from([b"a", b"ab", b"b", b"\xff", b"", b"a b", b"a\x0bb", b"a\tb"]),
    st.sampled_from([b"1", b"10", b"0", b"01", b"", b"-1", b"1 ", b"\xd9\xa3", b"9" * 25]),
)
_lines = st.one_of(
    st.builds(lambda w, n: b"%s\t%d\n" % (w, n), words, st.integers(1, 10**20)),
    _fields.map(lambda f: b"%s\t%s\n" % f),
    st.lists(_pieces, max_size=6).map(b"".join),
)


@given(lines=st.lists(_lines, max_size=12), header=st.sampled_from([tally.HEADER, b"", b"x\n"]))
def test_parse_of_bytes_is_iterate(lines: list[bytes], header: bytes) -> None:
    fast, slow = _both(header + b"".join(lines))
    assert fast == slow


def _both(data: bytes) -> tuple[object, object]:
    pairs = _parsed(lambda: list(tally.iterate(io.BytesIO(data), "f")))
    if isinstance(pairs, list):
        pairs = ([w for w, _ in pairs], [n for _, n in pairs])
    return _parsed(lambda: tally.parse(data, "f")), pairs


@given(
    lines=st.lists(_lines, max_size=12),
    header=st.sampled_from([tally.HEADER, b"", b"x\n"]),
    block=st.integers(1, 40),
)
def test_blocks_of_any_size_are_iterate(lines: list[bytes], header: bytes, block: int) -> None:
    """Lines cut across blocks anywhere (a line longer than a block, the order of words on
    either side of a cut): the same words and counts, or the same error, as line by line."""
    data = header + b"".join(lines)

    def in_blocks() -> tuple[list[bytes], list[int]]:
        words: list[bytes] = []
        counts: list[int] = []
        for w, digits in tally.blocks(io.BytesIO(data).read, "f", block):
            words += w
            counts += map(int, digits)
        return words, counts

    _, slow = _both(data)
    assert _parsed(in_blocks) == slow


# What tally._fields checks in a block of whole lines, as one regular expression over them (how
# it was checked before: several times slower). A word may be empty there: the words' order
# refuses it.
_LINES_OF_FIELDS = re.compile(rb"(?:[^ \t\n\x0b\x0c\r]*\t[1-9][0-9]*\n)*")


_valid_lines = st.lists(st.builds(lambda w, n: b"%s\t%d\n" % (w, n), words, st.integers(1, 10**20)))
_one_broken = st.sampled_from([b"a\t01\n", b"a\t0\n", b"a\t\n", b"a b\t1\n", b"a\x0bb\t1\n",
                               b"a\x0cb\t1\n", b"a\rb\t1\n", b"a\t1\t1\n", b"a\t1 \n", b"a\t\xd9\xa3\n",
                               b"a 1\n", b"a\n", b"\n", b"a\t\t1\n", b"\t1\n", b"a\t1\t2\n3\n"])  # fmt: skip


@given(
    lines=st.one_of(
        st.lists(_lines, min_size=1, max_size=12),
        st.tuples(_valid_lines, _one_broken, _valid_lines).map(lambda t: [*t[0], t[1], *t[2]]),
    )
)
def test_a_blocks_lines_are_checked_at_once_as_each_line_would_be(lines: list[bytes]) -> None:
    """Any lines, or valid ones but one broken in any way: what the block check accepts, and
    the fields it cuts them into, are those of its rule as a regular expression."""
    block = b"".join(lines).rstrip(b"\n") + b"\n"  # whole lines, as tally.blocks cuts them
    fields = tally._fields(block)
    if _LINES_OF_FIELDS.fullmatch(block) is None:
        assert fields is None
    else:
        pairs = [line.split(b"\t") for line in block.split(b"\n")[:-1]]
        assert fields == ([w for w, _ in pairs], [n for _, n in pairs])


@given(counts=counts)
def test_parse_of_a_valid_tally_gives_its_counts(counts: dict[bytes, int]) -> None:
    data = tally.HEADER + b"".join(b"%s\t%d\n" % item for item in sorted(counts.items()))
    assert tally.parse(data) == (sorted(counts), [counts[w] for w in sorted(counts)])


_BROKEN = [b"a\t01\n", b"a\t0\n", b"a\t-1\n", b"a\t\n", b"a b\t1\n", b"a\x0bb\t1\n",
           b"\t1\n", b"a\t1\t1\n", b"a\t\xd9\xa3\n", b"a 1\n", b"a\t+1\n"]  # fmt: skip


@given(counts=counts, at=st.integers(0, 60), broken=st.sampled_from([*_BROKEN, None]))
def test_parse_refuses_what_iterate_refuses(
    counts: dict[bytes, int], at: int, broken: bytes | None
) -> None:
    """A valid tally with one line broken, or (None) one line repeated: the same error."""
    lines = [b"%s\t%d\n" % item for item in sorted(counts.items())]
    where = min(at, len(lines))
    lines.insert(where, broken if broken is not None else (lines or [b"a\t1\n"])[where - 1])
    fast, slow = _both(tally.HEADER + b"".join(lines))
    assert fast == slow
    if broken is not None or len(lines) > 1:
        assert isinstance(fast, str), fast
