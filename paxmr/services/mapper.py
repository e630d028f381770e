"""The mapper service: counts the words of one byte range and writes ``{F}_I_{id}``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

from pydantic import Field

from paxmr import control, logs, paths
from paxmr.replies import MapperStatus, MapResult, SplitResult
from paxmr.services import daemon
from paxmr.settings import Settings
from paxmr.wordcount import count, split, tally

PROGRESS_EVERY = 0.25  # seconds between progress lines


class SplitArgs(control.Args):
    file: str
    parts: int = Field(ge=1, le=1024)


class MapArgs(control.Args):
    file: str
    offset: int = Field(ge=0)
    size: int = Field(ge=0)


def intermediate_name(file: str, mapper_id: int) -> str:
    return f"{file}_I_{mapper_id}"


class Cancelled(Exception):
    """The client hung up (Ctrl-C): the count stops at its next chunk and writes nothing."""


def _map(
    source: BinaryIO, out: tuple[int, str], args: MapArgs, done: list[int], cancel: threading.Event
) -> int:
    def progress(n: int) -> None:
        done[0] = n
        if cancel.is_set():
            raise Cancelled

    counts = count.count_range_arrow(source, args.offset, args.size, progress)
    dir_fd, name = out
    tally.write_blocks(Path(name), counts.tally_blocks(), dir_fd=dir_fd)
    return len(counts)


def ops(settings: Settings, mapper_id: int) -> dict[str, control.Op]:
    log = logs.get()

    async def run_map(args: MapArgs, progress: control.Progress) -> MapResult:
        output = intermediate_name(args.file, mapper_id)
        with (
            paths.open_input(settings.data_dir, args.file) as source,
            paths.output(settings.data_dir, output) as out,
        ):
            if args.offset + args.size > os.fstat(source.fileno()).st_size:
                raise control.ControlError("bad_args", "offset + size is past the end of the file")
            log.info("map_started", file=args.file, offset=args.offset, size=args.size)
            done = [0]
            cancel = threading.Event()
            job = asyncio.ensure_future(asyncio.to_thread(_map, source, out, args, done, cancel))
            try:
                while not job.done():
                    await asyncio.wait([job], timeout=PROGRESS_EVERY)
                    await progress({"done": done[0], "total": args.size})
            except (ConnectionError, BrokenPipeError):
                cancel.set()
                with contextlib.suppress(Cancelled):
                    await job
                log.warning("map_cancelled", file=args.file, done=done[0], size=args.size)
                raise control.ControlError("cancelled", "the client hung up") from None
            words = job.result()
        log.info("map_finished", file=args.file, output=output, distinct=words)
        return MapResult(output=output, distinct=words, bytes=args.size)

    async def run_split(args: SplitArgs, _progress: control.Progress) -> SplitResult:
        with paths.open_input(settings.data_dir, args.file) as source:
            ranges = await asyncio.to_thread(split.split, source, args.parts)
        return SplitResult(ranges=[(r.offset, r.size) for r in ranges])

    async def status(_args: control.NoArgs, _progress: control.Progress) -> MapperStatus:
        return MapperStatus(id=mapper_id)

    return {
        "split": control.Op(SplitArgs, run_split),
        "map": control.Op(MapArgs, run_map),
        "status": control.Op(control.NoArgs, status),
    }


async def main(settings: Settings, mapper_id: int) -> None:
    count.frugal()
    await daemon.serve(settings, ops(settings, mapper_id), settings.mapper_socket(mapper_id))
