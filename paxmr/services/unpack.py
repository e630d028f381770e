"""A msgpack decoder for large peer frames: bounded in objects and depth, and fair to the loop.

The C decoder in the ``msgpack`` package holds the GIL for a whole frame: 23 MiB of small nested
arrays kept the event loop from running for over 8 s even from a worker thread. This decoder is
plain Python, so a worker thread running it gives the GIL back every few milliseconds, and it
stops at ``max_objects`` and ``max_depth``, so no frame costs more than a bounded amount of work
and memory. It decodes only what peer messages use: nil, booleans, integers, UTF-8 strings,
binaries, arrays and maps with string keys; anything else (floats, extension types) is refused.
Small frames are cheaper with the C decoder and stay with it (see transport.decode).
"""

from __future__ import annotations

import struct
from typing import Any

_U8, _U16, _U32, _U64 = (struct.Struct(f">{c}") for c in "BHIQ")
_I8, _I16, _I32, _I64 = (struct.Struct(f">{c}") for c in "bhiq")
_CONSTANTS: dict[int, Any] = {0xC0: None, 0xC2: False, 0xC3: True}
_INTS = {
    0xCC: _U8,
    0xCD: _U16,
    0xCE: _U32,
    0xCF: _U64,
    0xD0: _I8,
    0xD1: _I16,
    0xD2: _I32,
    0xD3: _I64,
}
_LENGTHS = (_U8, _U16, _U32)


class UnpackError(ValueError):
    """Not msgpack this decoder accepts, or over one of its limits."""


class _Reader:
    def __init__(self, data: bytes | memoryview, limits: tuple[int, int, int, int, int]) -> None:
        self.view = memoryview(data)
        self.pos = 0
        self.objects = 0
        (self.max_objects, self.max_depth, self.max_str, self.max_bin, self.max_len) = limits

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.view):
            raise UnpackError("truncated msgpack data")
        chunk = self.view[self.pos : end]
        self.pos = end
        return chunk

    def num(self, fmt: struct.Struct) -> Any:
        value = (
            fmt.unpack_from(self.view, self.pos) if self.pos + fmt.size <= len(self.view) else ()
        )
        if not value:
            raise UnpackError("truncated msgpack data")
        self.pos += fmt.size
        return value[0]

    def obj(self, depth: int) -> Any:  # noqa: C901, PLR0912 - one branch per msgpack type
        self.objects += 1
        if self.objects > self.max_objects:
            raise UnpackError(f"more than {self.max_objects} objects")
        b = self.num(_U8)
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if b in _CONSTANTS:
            return _CONSTANTS[b]
        if b in _INTS:
            return self.num(_INTS[b])
        if 0xC4 <= b <= 0xC6:
            n = self.num(_LENGTHS[b - 0xC4])
            if n > self.max_bin:
                raise UnpackError(f"binary of {n} bytes over {self.max_bin}")
            return bytes(self.take(n))
        if 0xD9 <= b <= 0xDB:
            return self.text(self.num(_LENGTHS[b - 0xD9]))
        if b in (0xDC, 0xDD):
            return self.array(self.num(_LENGTHS[b - 0xDB]), depth)
        if b in (0xDE, 0xDF):
            return self.map(self.num(_LENGTHS[b - 0xDD]), depth)
        raise UnpackError(f"msgpack type 0x{b:02x} is not accepted")

    def text(self, n: int) -> str:
        if n > self.max_str:
            raise UnpackError(f"string of {n} bytes over {self.max_str}")
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise UnpackError(f"string is not UTF-8: {exc}") from exc

    def _enter(self, n: int, depth: int) -> None:
        if n > self.max_len:
            raise UnpackError(f"container of {n} items over {self.max_len}")
        if depth >= self.max_depth:
            raise UnpackError(f"nested deeper than {self.max_depth}")
        if n > len(self.view) - self.pos:  # every item takes at least one byte
            raise UnpackError("truncated msgpack data")

    def array(self, n: int, depth: int) -> list[Any]:
        self._enter(n, depth)
        return [self.obj(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> dict[str, Any]:
        self._enter(2 * n, depth)
        out: dict[str, Any] = {}
        for _ in range(n):
            key = self.obj(depth + 1)
            if not isinstance(key, str):
                raise UnpackError("map keys must be strings")
            out[key] = self.obj(depth + 1)
        return out


def unpack(
    data: bytes | memoryview,
    *,
    max_objects: int,
    max_depth: int,
    max_str_len: int,
    max_bin_len: int,
    max_container_len: int,
) -> Any:
    """Decode one msgpack object that must fill ``data`` exactly."""
    reader = _Reader(data, (max_objects, max_depth, max_str_len, max_bin_len, max_container_len))
    obj = reader.obj(0)
    if reader.pos != len(data):
        raise UnpackError("extra data after the msgpack object")
    return obj
