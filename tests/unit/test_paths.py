"""File names from clients resolve inside the data directory, or are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxmr.paths import PathRefused, resolve


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "f.txt").write_text("x")
    (d / "sub" / "g.txt").write_text("y")
    (tmp_path / "secret").write_text("outside")
    return d


@pytest.mark.parametrize(
    "name",
    ["..", "../secret", "sub/../../secret", "../data", "./../secret", "sub/deeper/../../../secret"],
)
def test_dotdot_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused, match="outside the data directory"):
        resolve(data, name)


@pytest.mark.parametrize("name", ["/etc/passwd", "/", "/tmp"])
def test_absolute_outside_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused, match="outside the data directory"):
        resolve(data, name)


def test_absolute_sibling_with_common_prefix_refused(data: Path) -> None:
    sibling = data.parent / "data2"
    sibling.mkdir()
    with pytest.raises(PathRefused):
        resolve(data, str(sibling / "f.txt"))


def test_symlink_leading_out_refused(data: Path) -> None:
    (data / "link").symlink_to(data.parent / "secret")
    (data / "sub" / "dirlink").symlink_to(data.parent)
    with pytest.raises(PathRefused):
        resolve(data, "link")
    with pytest.raises(PathRefused):
        resolve(data, "sub/dirlink/secret")


def test_dangling_symlink_leading_out_refused(data: Path) -> None:
    # Writing through it would create a file outside.
    (data / "out_I_1").symlink_to(data.parent / "not-yet")
    with pytest.raises(PathRefused):
        resolve(data, "out_I_1")


@pytest.mark.parametrize("name", ["", ".", "./", "sub/..", "nul\0byte"])
def test_empty_or_the_directory_itself_refused(data: Path, name: str) -> None:
    with pytest.raises(PathRefused):
        resolve(data, name)


@pytest.mark.parametrize(
    ("name", "relative"),
    [
        ("f.txt", "f.txt"),
        ("sub/g.txt", "sub/g.txt"),
        ("sub/deeper/../g.txt", "sub/g.txt"),
        ("./f.txt", "f.txt"),
        ("new_file_I_1", "new_file_I_1"),  # need not exist yet: outputs are resolved too
        ("sub/new_reduced", "sub/new_reduced"),
        ("ünï cödé.txt", "ünï cödé.txt"),
    ],
)
def test_names_inside_accepted(data: Path, name: str, relative: str) -> None:
    assert resolve(data, name) == data.resolve() / relative


def test_absolute_inside_accepted(data: Path) -> None:
    assert resolve(data, str(data / "sub" / "g.txt")) == data.resolve() / "sub" / "g.txt"


def test_symlink_staying_inside_accepted(data: Path) -> None:
    (data / "alias").symlink_to(data / "sub" / "g.txt")
    assert resolve(data, "alias") == data.resolve() / "sub" / "g.txt"


def test_data_dir_itself_behind_a_symlink(tmp_path: Path, data: Path) -> None:
    link = tmp_path / "data-link"
    link.symlink_to(data)
    assert resolve(link, "f.txt") == data.resolve() / "f.txt"
    with pytest.raises(PathRefused):
        resolve(link, "../secret")
