"""File names from clients resolve inside the node's data directory, or not at all."""

from __future__ import annotations

import errno
import functools
from pathlib import Path


class PathRefused(ValueError):
    """The name points outside the data directory (``..``, an absolute path, a symlink)."""


# Linux's limits (NAME_MAX, PATH_MAX): past them the kernel answers ENAMETOOLONG.
_NAME_MAX, _PATH_MAX = 255, 4096


@functools.cache
def _real(data_dir: Path) -> Path:
    # Resolved once per process: names are then confined to the directory found at the first use.
    return data_dir.resolve()


def _plain(root: Path, name: str) -> Path | None:
    """``root / name`` when no component is ``.``, ``..`` or a symlink: then it is already real,
    and costs one lstat per component of ``name`` instead of realpath's walk from ``/``."""
    parts = name.split("/")
    if (
        name.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        return None
    path = root
    for part in filter(None, parts):
        path = path / part
        if path.is_symlink():
            return None
    return path


def resolve(data_dir: Path, name: str) -> Path:
    if not name or "\0" in name:
        raise PathRefused(f"invalid file name {name!r}")
    if len(name.encode()) > _PATH_MAX or any(len(p.encode()) > _NAME_MAX for p in name.split("/")):
        raise PathRefused(f"file name too long: {name[:40]!r}...")
    root = _real(data_dir)
    path = _plain(root, name) or (root / name).resolve()  # follows symlinks, as a link may lead out
    if path == root or not path.is_relative_to(root):
        raise PathRefused(f"{name!r} is outside the data directory {root}")
    if name.endswith("/"):
        raise PathRefused(f"{name!r} names a directory, not a file")
    return path


def existing(data_dir: Path, name: str) -> Path:
    """``resolve``, for a file that must already be there (an input)."""
    path = resolve(data_dir, name)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file in the data directory", name)
    return path
