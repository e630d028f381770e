"""File names from clients resolve inside the node's data directory, race-free, or not at all.

A name is walked one component at a time from a descriptor of the data directory, each step an
``openat`` with ``O_NOFOLLOW`` relative to the directory opened before it. No symbolic link is
ever followed, so swapping a directory for a link while a request runs cannot lead a service out
of the data directory: the walk either holds the real directory or fails. Names are read from,
and outputs written into, the descriptors the walk returns, never by name from ``/``.

``..`` and ``.`` are taken lexically (safe, as no link is followed), an absolute name must lie
under the data directory, and the data directory's own path may itself be a link (it comes from
the configuration, not from a client).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class PathRefused(ValueError):
    """The name is not acceptable: outside the data directory, through a link, or malformed."""


# Linux's limits (NAME_MAX, PATH_MAX): past them the kernel answers ENAMETOOLONG.
_NAME_MAX, _PATH_MAX = 255, 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def components(data_dir: Path, name: str) -> list[str]:
    """The name's components below the data directory, checked; raises ``PathRefused``."""
    if not name or "\0" in name:
        raise PathRefused(f"invalid file name {name!r}")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:  # a lone surrogate: no file can have this name
        raise PathRefused(f"invalid file name {name!r}: not valid Unicode text") from None
    if len(encoded) > _PATH_MAX or any(len(p.encode()) > _NAME_MAX for p in name.split("/")):
        raise PathRefused(f"file name too long: {name[:40]!r}...")
    parts = _lexical(data_dir, _below(data_dir, name) if name.startswith("/") else name)
    if not parts:
        raise PathRefused(f"{name!r} is outside the data directory {data_dir}: it is the directory")
    if name.endswith("/"):
        raise PathRefused(f"{name!r} names a directory, not a file")
    return parts


def _lexical(data_dir: Path, name: str) -> list[str]:
    """``name``'s components with ``.`` and ``..`` taken away; ``..`` may not climb out."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise PathRefused(f"{name!r} is outside the data directory {data_dir}")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def _below(data_dir: Path, name: str) -> str:
    """An absolute name as a name relative to the data directory (as configured or resolved)."""
    for root in (data_dir, data_dir.resolve()):
        with contextlib.suppress(ValueError):
            return str(Path(name).relative_to(root)) + ("/" if name.endswith("/") else "")
    raise PathRefused(f"{name!r} is outside the data directory {data_dir}")


def _link_refused(data_dir: Path, name: str) -> PathRefused:
    return PathRefused(
        f"{name!r} is outside the data directory {data_dir}: it goes through a symbolic link,"
        " and links are not followed"
    )


@contextlib.contextmanager
def directory_of(data_dir: Path, name: str) -> Iterator[tuple[int, str]]:
    """A descriptor of the directory that holds ``name``'s last component, and that component.

    Raises ``PathRefused`` for a name that leaves the data directory or crosses a link, and
    ``FileNotFoundError`` when a directory on the way is missing.
    """
    *dirs, leaf = components(data_dir, name)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            try:
                step = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _walk_error(data_dir, name, fd, part, exc) from None
            os.close(fd)
            fd = step
        yield fd, leaf
    finally:
        os.close(fd)


def _walk_error(data_dir: Path, name: str, fd: int, part: str, exc: OSError) -> Exception:
    if exc.errno == errno.ELOOP or _is_link(fd, part):
        return _link_refused(data_dir, name)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileNotFoundError(errno.ENOENT, "no such file in the data directory", name)
    return exc


def _is_link(dir_fd: int, leaf: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(leaf, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def open_input(data_dir: Path, name: str) -> BinaryIO:
    """An existing regular file in the data directory, opened for reading (unbuffered).

    The file is what the name pointed to when it was opened: renaming or swapping anything
    afterwards changes nothing for the reader.
    """
    with directory_of(data_dir, name) as (dir_fd, leaf):
        try:
            # O_NONBLOCK: opening a FIFO planted under the name must not hang the service.
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dir_fd)  # fmt: skip
        except OSError as exc:
            raise _walk_error(data_dir, name, dir_fd, leaf, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file in the data directory", name)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


@contextlib.contextmanager
def output(data_dir: Path, name: str) -> Iterator[tuple[int, str]]:
    """Where to write ``name``: its directory's descriptor and its last component.

    An existing link under the name is refused (writers replace the name by rename, which never
    follows a link, so a link planted later is replaced, not written through).
    """
    with directory_of(data_dir, name) as (dir_fd, leaf):
        try:
            mode = os.lstat(leaf, dir_fd=dir_fd).st_mode
        except FileNotFoundError:
            mode = 0
        if stat.S_ISLNK(mode):
            raise _link_refused(data_dir, name)
        if stat.S_ISDIR(mode):
            raise PathRefused(f"{name!r} is a directory: an output cannot replace it")
        yield dir_fd, leaf


def resolve(data_dir: Path, name: str) -> Path:
    """The path ``name`` stands for, for messages and tests; open files with ``open_input`` and
    ``output``, which hold against races, not by this path."""
    return data_dir.resolve().joinpath(*components(data_dir, name))
