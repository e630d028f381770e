"""The word-count job as the CLI drives it: split, fan out to the mappers, reduce."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from paxmr import control, paths
from paxmr.settings import Settings
from paxmr.wordcount import split

# Counting a large file can take minutes; the services send progress lines meanwhile.
JOB_TIMEOUT = 3600.0


def run_map(
    settings: Settings, file: str, on_progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Split ``file`` at whitespace into one range per mapper and count the ranges in parallel."""
    source = paths.resolve(settings.data_dir, file)
    if not source.is_file():
        raise control.RemoteError("not_found", f"no such file in the data directory: {file}")
    ranges = split.split(source, settings.mappers)
    total = sum(r.size for r in ranges)
    done = [0] * len(ranges)
    lock = threading.Lock()
    started = time.monotonic()

    def one(index: int) -> dict[str, Any]:
        def progress(info: dict[str, Any]) -> None:
            with lock:
                done[index] = int(info.get("done", 0))
                if on_progress is not None:
                    on_progress(sum(done), total)

        args = {"file": file, "offset": ranges[index].offset, "size": ranges[index].size}
        result: dict[str, Any] = control.call(
            settings.mapper_socket(index + 1),
            "map",
            args,
            timeout=JOB_TIMEOUT,
            on_progress=progress,
        )
        return result

    with ThreadPoolExecutor(len(ranges)) as pool:
        results = list(pool.map(one, range(len(ranges))))
    return {
        "file": file,
        "bytes": total,
        "outputs": [r["output"] for r in results],
        "seconds": round(time.monotonic() - started, 3),
    }


def run_reduce(settings: Settings, files: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = control.call(
        settings.reducer_socket, "reduce", {"files": files}, timeout=JOB_TIMEOUT
    )
    return result


def replicate(settings: Settings, file: str, request_id: str | None = None) -> dict[str, Any]:
    """Replicate a reduced tally. Retrying with the same request id never lands it twice."""
    args = {"file": file, "request_id": request_id or uuid.uuid4().hex}
    # The PRM answers within its replicate timeout: refused with no_quorum when none was reached.
    result: dict[str, Any] = control.call(
        settings.prm_socket, "replicate", args, timeout=settings.timing.replicate_timeout * 3
    )
    return result
