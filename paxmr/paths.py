"""File names from clients resolve inside the node's data directory, or not at all."""

from __future__ import annotations

from pathlib import Path


class PathRefused(ValueError):
    """The name points outside the data directory (``..``, an absolute path, a symlink)."""


def resolve(data_dir: Path, name: str) -> Path:
    if not name or "\0" in name:
        raise PathRefused(f"invalid file name {name!r}")
    root = data_dir.resolve()
    path = (root / name).resolve()  # follows symlinks, so a link that leads out is caught here
    if path == root or not path.is_relative_to(root):
        raise PathRefused(f"{name!r} is outside the data directory {root}")
    return path
