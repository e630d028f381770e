"""The word-count job as the CLI drives it: split, fan out to the mappers, reduce."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from paxmr import control
from paxmr.replies import MapResult, ReduceResult, Replicated, SplitResult
from paxmr.settings import Settings

# Counting a large file can take minutes; the services send progress lines meanwhile.
JOB_TIMEOUT = 3600.0


def run_map(
    settings: Settings, file: str, on_progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Split ``file`` at whitespace into one range per mapper and count the ranges in parallel.

    The services do all file access: the data directory need not be readable by the caller.
    """
    answer = control.call(
        settings.mapper_socket(1),
        "split",
        {"file": file, "parts": settings.mappers},
        reply=SplitResult,
    )
    ranges = answer.ranges
    total = sum(size for _, size in ranges)
    done = [0] * len(ranges)
    lock = threading.Lock()
    started = time.monotonic()
    clients = [
        control.Client(settings.mapper_socket(i + 1), JOB_TIMEOUT) for i in range(len(ranges))
    ]

    def one(index: int) -> MapResult:
        def progress(info: dict[str, Any]) -> None:
            with lock:
                done[index] = int(info.get("done", 0))
                if on_progress is not None:
                    on_progress(sum(done), total)

        offset, size = ranges[index]
        args = {"file": file, "offset": offset, "size": size}
        return clients[index].call("map", args, progress, reply=MapResult)

    pool = ThreadPoolExecutor(len(ranges))
    try:
        results = list(pool.map(one, range(len(ranges))))
    except BaseException:
        # Ctrl-C (or a failed mapper): hang up on every mapper; a mapper whose client is gone
        # stops counting at its next progress line, and no thread here waits for it.
        for client in clients:
            client.abort()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for client in clients:
            client.close()
    return {
        "file": file,
        "bytes": total,
        "outputs": [r.output for r in results],
        "seconds": round(time.monotonic() - started, 3),
    }


def run_reduce(settings: Settings, files: list[str]) -> ReduceResult:
    return control.call(
        settings.reducer_socket, "reduce", {"files": files}, timeout=JOB_TIMEOUT, reply=ReduceResult
    )


def replicate(settings: Settings, file: str, request_id: str | None = None) -> Replicated:
    """Replicate a reduced tally. Retrying with the same request id never lands it twice."""
    args = {"file": file, "request_id": request_id or uuid.uuid4().hex}
    try:
        # The PRM answers within its replicate timeout, with no_quorum when none was reached;
        # a tally in chunks sends a progress line after each chunk, and the wait starts again
        # with every line (control.Client): slow only while nothing lands.
        result = control.call(
            settings.prm_socket,
            "replicate",
            args,
            timeout=settings.timing.replicate_timeout * 3,
            reply=Replicated,
        )
    except (TimeoutError, control.RemoteError) as exc:
        if isinstance(exc, control.RemoteError) and exc.code != "disconnected":
            # A refusal before the PRM read the request (busy: every connection running one)
            # names no request id: it is this one, as in every other replicate error.
            exc.request_id = exc.request_id or args["request_id"]
            raise
        raise control.RemoteError(
            "unknown_outcome",
            f"no answer from the PRM ({exc}); the entry may still land: retry with"
            f" --request-id {args['request_id']}",
            request_id=args["request_id"],
        ) from exc
    return result
