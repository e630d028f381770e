"""map + reduce through one local node's real services, against one process with a Counter.

Every figure is printed beside its baseline from the same run: the whole job (split, mappers in
parallel, reduce) and the counting kernel alone on one core, each against the streaming
``bytes.split()`` + ``Counter`` loop; ``wc -w`` scanning the same file is the machine's ceiling
for one core. The bench checks that every result equals the baseline's, and fails if not.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from paxmr import jobs, local
from paxmr.settings import load
from paxmr.wordcount import corpus, count, tally


def _rss_mib(pid: int, field: str) -> float:
    """``VmHWM`` (the peak), ``VmRSS`` (now) or one of its parts (``RssFile``, ``RssAnon``) of a
    process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Unequal(RuntimeError):
    """A word count differs from the baseline's: the figures of this run mean nothing."""


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(size: int, file: Path | None, mappers: int) -> dict[str, Any]:
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-") as tmp:
        root = Path(tmp)
        local.up(root, nodes=2, mappers=mappers)  # the smallest cluster; node 1 does the work
        try:
            settings = load(local.config_path(root, 1))
            text = settings.data_dir / "bench.txt"
            if file is None:
                corpus.generate(text, size, seed=1)
            else:
                shutil.copyfile(file, text)
            size = text.stat().st_size
            text.read_bytes()  # warm the page cache so both runs read from memory
            services = local.load_state(root)
            mapper_pids = [s.pid for s in services if s.name.startswith("mapper")]
            # The job's CPU: node 1's mappers and reducer (on a loaded machine it varies less
            # than the wall clock, whose share of the cores changes from moment to moment).
            workers = [s.pid for s in services if s.node == 1 and s.name != "prm"]
            idle_rss = max(_rss_mib(pid, "VmRSS") for pid in mapper_pids)  # memory's baseline
            # Its parts: the libraries' pages count in RSS by whole page-cache folio, so the file
            # part is larger when they sit in large folios (as just after a boot) than later.
            idle_file = max(_rss_mib(pid, "RssFile") for pid in mapper_pids)
            idle_anon = max(_rss_mib(pid, "RssAnon") for pid in mapper_pids)

            workers_cpu = sum(_cpu_s(pid) for pid in workers)
            started = time.perf_counter()
            mapped = jobs.run_map(settings, text.name)
            map_s = time.perf_counter() - started
            reduced = jobs.run_reduce(settings, mapped["outputs"])
            paxmr_s = time.perf_counter() - started
            paxmr_cpu_s = sum(_cpu_s(pid) for pid in workers) - workers_cpu

            # The baseline: the streaming bytes.split() + Counter loop, in one process.
            started, cpu = time.perf_counter(), time.process_time()
            baseline = count.count_range_reference(text, 0, size)
            baseline_s = time.perf_counter() - started
            baseline_cpu_s = time.process_time() - cpu

            # The kernel alone, one process on one core, and wc -w: what one core can scan.
            # CPU seconds too: on a shared machine they vary less than wall-clock seconds.
            count.frugal()
            started, cpu = time.perf_counter(), time.process_time()
            kernel = count.count_range_arrow(text, 0, size)
            kernel_s = time.perf_counter() - started
            kernel_cpu_s = time.process_time() - cpu
            started, cpu = time.perf_counter(), _children_cpu_s()
            subprocess.run(["wc", "-w", str(text)], check=True, capture_output=True)  # noqa: S603, S607
            wc_s = time.perf_counter() - started
            wc_cpu_s = _children_cpu_s() - cpu

            if tally.read(settings.data_dir / reduced.output) != dict(baseline):
                raise Unequal("the job's reduced tally differs from the baseline's counts")
            if kernel.as_counter() != baseline:
                raise Unequal("the kernel's counts differ from the baseline's")
            rss = max(_rss_mib(pid, "VmHWM") for pid in mapper_pids)
        finally:
            local.down(root)
    mb = size / 1e6
    return {
        "bytes": size,
        "mappers": mappers,
        "paxmr_s": round(paxmr_s, 3),
        "paxmr_map_s": round(map_s, 3),
        "paxmr_reduce_s": round(paxmr_s - map_s, 3),
        "baseline_s": round(baseline_s, 3),
        "speedup": round(baseline_s / paxmr_s, 2),
        "paxmr_cpu_s": round(paxmr_cpu_s, 3),
        "baseline_cpu_s": round(baseline_cpu_s, 3),
        "speedup_cpu": round(baseline_cpu_s / paxmr_cpu_s, 2),
        "mb_per_s": round(mb / paxmr_s, 1),
        "baseline_mb_per_s": round(mb / baseline_s, 1),
        "kernel_one_core_s": round(kernel_s, 3),
        "kernel_speedup_per_core": round(baseline_s / kernel_s, 2),
        "kernel_cpu_s": round(kernel_cpu_s, 3),
        "kernel_speedup_per_core_cpu": round(baseline_cpu_s / kernel_cpu_s, 2),
        "kernel_mb_per_s": round(mb / kernel_s, 1),
        "wc_w_s": round(wc_s, 3),
        "wc_w_cpu_s": round(wc_cpu_s, 3),
        "wc_w_mb_per_s": round(mb / wc_s, 1),
        "kernel_vs_wc_w": round(wc_s / kernel_s, 2),
        "kernel_vs_wc_w_cpu": round(wc_cpu_s / kernel_cpu_s, 2),
        "distinct_words": reduced.distinct,
        "mapper_max_rss_mib": round(rss, 1),
        "mapper_idle_rss_mib": round(idle_rss, 1),
        "mapper_idle_file_mib": round(idle_file, 1),
        "mapper_idle_anon_mib": round(idle_anon, 1),
        "equal": True,  # checked above: every run raises Unequal otherwise
        "load_average": [load_before, _load()],  # a shared machine's figures need this beside
    }
