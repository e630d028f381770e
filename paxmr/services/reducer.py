"""The reducer service: merges intermediate tallies ``{F}_I_{id}`` into ``{F}_reduced``."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import BinaryIO

from pydantic import Field

from paxmr import control, logs, paths
from paxmr.replies import ReduceResult, ReducerStatus
from paxmr.services import daemon
from paxmr.settings import Settings
from paxmr.wordcount import tally

_INTERMEDIATE = re.compile(r"(?P<base>.+)_I_(?P<id>[0-9]+)")


class ReduceArgs(control.Args):
    files: list[str] = Field(min_length=1)


def reduced_name(intermediates: list[str]) -> str:
    """``a_b.txt_I_1, a_b.txt_I_2`` -> ``a_b.txt_reduced``: the suffix is taken off the right."""
    if len(set(intermediates)) != len(intermediates):
        raise control.ControlError("bad_args", "an intermediate file is named twice")
    bases = set()
    for name in intermediates:
        m = _INTERMEDIATE.fullmatch(name)
        if m is None:
            raise control.ControlError("bad_args", f"{name!r} is not an intermediate file (F_I_N)")
        bases.add(m["base"])
    if len(bases) != 1:
        raise control.ControlError("bad_args", f"intermediates of different files: {sorted(bases)}")
    return f"{bases.pop()}_reduced"


def _reduce(inputs: dict[str, BinaryIO], out: tuple[int, str]) -> int:
    dir_fd, name = out
    merged = tally.merge(tally.iterate(f, n) for n, f in inputs.items())
    return tally.write_sorted(Path(name), merged, dir_fd=dir_fd)


def ops(settings: Settings) -> dict[str, control.Op]:
    log = logs.get()

    async def run_reduce(args: ReduceArgs, _progress: control.Progress) -> ReduceResult:
        name = reduced_name(args.files)
        with contextlib.ExitStack() as stack:
            inputs = {
                f: stack.enter_context(paths.open_input(settings.data_dir, f)) for f in args.files
            }
            out = stack.enter_context(paths.output(settings.data_dir, name))
            try:
                distinct = await asyncio.to_thread(_reduce, inputs, out)
            except tally.TallyError as exc:
                raise control.ControlError("bad_tally", str(exc)) from exc
        log.info("reduce_finished", inputs=args.files, output=name, distinct=distinct)
        return ReduceResult(output=name, distinct=distinct)

    async def status(_args: control.NoArgs, _progress: control.Progress) -> ReducerStatus:
        return ReducerStatus()

    return {
        "reduce": control.Op(ReduceArgs, run_reduce),
        "status": control.Op(control.NoArgs, status),
    }


async def main(settings: Settings) -> None:
    await daemon.serve(settings, ops(settings), settings.reducer_socket)
