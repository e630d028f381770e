"""Chunked values: a manifest names its parts, and assembling checks them."""

from __future__ import annotations

import pytest

from paxmr import chunks
from paxmr.catalog import summarize
from paxmr.logobject import LogObject

OBJ = LogObject.from_counts("f_reduced", 1, "r", [(b"w%05d" % i, i + 1) for i in range(3000)])
VALUE = OBJ.encode()


def _parts_of(parts: list[bytes]):
    return lambda manifest: list(parts)


def test_a_split_value_assembles_to_itself_and_summarizes_as_the_object():
    manifest, parts = chunks.split(VALUE, OBJ.file, OBJ.digest, 1000)
    assert manifest.parts == len(parts) == -(-len(VALUE) // 1000)
    assert all(len(p) <= 1000 for p in parts)
    assert chunks.manifest(manifest.encode()) == manifest
    assert manifest.assemble(list(parts)) == VALUE
    assert summarize(manifest.encode(), 4, _parts_of(parts)) == OBJ.summary(4)
    assert len(set(manifest.chunk_ids())) == manifest.parts


def test_missing_or_altered_parts_show_as_an_error_never_as_another_object():
    manifest, parts = chunks.split(VALUE, OBJ.file, OBJ.digest, 1000)
    missing: list[bytes | None] = [*parts[:-1], None]
    with pytest.raises(chunks.BadManifest, match="not in the log"):
        manifest.assemble(missing)
    altered = [parts[0][:-1] + b"\x00", *parts[1:]]
    with pytest.raises(chunks.BadManifest, match="digest"):
        manifest.assemble(altered)
    shown = summarize(manifest.encode(), 0, _parts_of(altered))
    assert "error" in shown
    assert "error" in summarize(manifest.encode(), 0)  # no way to read its parts


def test_only_a_well_formed_small_manifest_is_one():
    assert chunks.manifest(VALUE) is None  # a log object is not a manifest
    assert chunks.manifest(b"\xc1") is None
    huge = chunks.Manifest("f", "d", "0" * 64, 1 << 40, 1 << 41)
    assert chunks.manifest(huge.encode()) is None  # could make a reader list 2**40 parts
    short = chunks.Manifest("f", "d", "0" * 63, 2, 10)
    assert chunks.manifest(short.encode()) is None
