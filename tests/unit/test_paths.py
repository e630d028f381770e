"""File names from clients resolve inside the data directory, race-free, or are refused."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from paxmr.paths import PathRefused, open_input, output, resolve
from paxmr.wordcount import tally


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "f.txt").write_text("x")
    (d / "sub" / "g.txt").write_text("y")
    (tmp_path / "secret").write_text("outside")
    return d


def read(data: Path, name: str) -> bytes:
    with open_input(data, name) as f:
        return f.read()


@pytest.mark.parametrize(
    "name",
    ["..", "../secret", "sub/../../secret", "../data", "./../secret", "sub/deeper/../../../secret"],
)
def test_dotdot_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused, match="outside the data directory"):
        resolve(data, name)
    with pytest.raises(PathRefused, match="outside the data directory"):
        read(data, name)


@pytest.mark.parametrize("name", ["/etc/passwd", "/", "/tmp"])
def test_absolute_outside_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused, match="outside the data directory"):
        read(data, name)


def test_absolute_sibling_with_common_prefix_refused(data: Path) -> None:
    sibling = data.parent / "data2"
    sibling.mkdir()
    (sibling / "f.txt").write_text("z")
    with pytest.raises(PathRefused):
        read(data, str(sibling / "f.txt"))


def test_symlink_leading_out_refused(data: Path) -> None:
    (data / "link").symlink_to(data.parent / "secret")
    (data / "sub" / "dirlink").symlink_to(data.parent)
    with pytest.raises(PathRefused, match="symbolic link"):
        read(data, "link")
    with pytest.raises(PathRefused, match="symbolic link"):
        read(data, "sub/dirlink/secret")


def test_no_symlink_is_followed_even_inside(data: Path) -> None:
    """The design's rule: no link followed at all, so no check of where it leads can race."""
    (data / "alias").symlink_to(data / "sub" / "g.txt")
    (data / "subalias").symlink_to(data / "sub")
    with pytest.raises(PathRefused, match="symbolic link"):
        read(data, "alias")
    with pytest.raises(PathRefused, match="symbolic link"):
        read(data, "subalias/g.txt")


def test_output_over_a_planted_link_refused(data: Path) -> None:
    # Writing through it would create a file outside.
    (data / "out_I_1").symlink_to(data.parent / "not-yet")
    with pytest.raises(PathRefused), output(data, "out_I_1"):
        pass
    assert not (data.parent / "not-yet").exists()


def test_output_over_a_directory_refused(data: Path) -> None:
    with pytest.raises(PathRefused, match="is a directory"), output(data, "sub/deeper"):
        pass


@pytest.mark.parametrize("name", ["", ".", "./", "sub/..", "nul\0byte", "sub/"])
def test_empty_or_a_directory_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused):
        resolve(data, name)


@pytest.mark.parametrize("name", ["bad\udcff.txt", "\ud800", "sub/\udc80"])
def test_lone_surrogate_is_a_clear_refusal(data: Path, name: str) -> None:
    with pytest.raises(PathRefused, match="not valid Unicode"):
        read(data, name)


def test_missing_file_and_missing_directory(data: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(data, "nope.txt")
    with pytest.raises(FileNotFoundError):
        read(data, "nodir/x.txt")
    with pytest.raises(FileNotFoundError):
        read(data, "f.txt/x")  # a file used as a directory
    with pytest.raises(FileNotFoundError):
        read(data, "sub")  # a directory is not an input file


def test_a_fifo_is_refused_without_hanging(data: Path) -> None:
    os.mkfifo(data / "pipe")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        read(data, "pipe")


@pytest.mark.parametrize(
    ("name", "relative"),
    [
        ("f.txt", "f.txt"),
        ("sub/g.txt", "sub/g.txt"),
        ("sub/deeper/../g.txt", "sub/g.txt"),
        ("./f.txt", "f.txt"),
    ],
)
def test_names_inside_accepted(data: Path, name: str, relative: str) -> None:
    assert resolve(data, name) == data.resolve() / relative
    assert read(data, name) == (data / relative).read_bytes()


def test_absolute_inside_accepted(data: Path) -> None:
    assert read(data, str(data / "sub" / "g.txt")) == b"y"
    assert read(data, str(data.resolve() / "sub" / "g.txt")) == b"y"


def test_outputs_are_written_where_the_walk_went(data: Path) -> None:
    for name in ("new_I_1", "sub/new_reduced", "ünï cödé.txt"):
        with output(data, name) as (dir_fd, leaf):
            tally.write(Path(leaf), [(b"w", 2)], dir_fd=dir_fd)
        assert tally.read(data / name) == {b"w": 2}
    assert sorted(p.name for p in data.rglob(".*.tmp")) == []


def test_data_dir_itself_behind_a_symlink(tmp_path: Path, data: Path) -> None:
    link = tmp_path / "data-link"
    link.symlink_to(data)
    assert read(link, "f.txt") == b"x"
    assert read(link, str(link / "f.txt")) == b"x"
    with pytest.raises(PathRefused):
        read(link, "../secret")


# --- races ---------------------------------------------------------------------------------------


def swapping(data: Path, outside: Path, stop: threading.Event) -> None:
    """Swap ``data/sub`` between a real directory and a link to ``outside``, as fast as it goes."""
    real, link, parked = data / "sub", data / "sublink", data / "parked"
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
            real.rename(parked)
            link.rename(real)  # sub is now a link to outside
            real.rename(link)
            parked.rename(real)  # sub is the real directory again


@pytest.fixture
def racing(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "g.txt").write_text("outside secret")
    (data / "sublink").symlink_to(outside)
    return data, outside


def test_swapping_a_directory_for_a_link_never_leads_out(racing: tuple[Path, Path]) -> None:
    data, outside = racing
    stop = threading.Event()
    swapper = threading.Thread(target=swapping, args=(data, outside, stop))
    swapper.start()
    seen: set[bytes] = set()
    written = 0
    try:
        for i in range(3000):
            # Refusals and vanished names are fine answers mid-swap; reading outside is not.
            with contextlib.suppress(PathRefused, OSError):
                seen.add(read(data, "sub/g.txt"))
            with (
                contextlib.suppress(PathRefused, OSError),
                output(data, f"sub/out_{i}") as (dir_fd, leaf),
            ):
                tally.write(Path(leaf), [(b"w", 1)], dir_fd=dir_fd)
                written += 1
    finally:
        stop.set()
        swapper.join()
    assert b"outside secret" not in seen
    assert sorted(p.name for p in outside.iterdir()) == ["g.txt"], "a write went outside"
    assert seen == {b"y"}
    assert written > 0
