"""`paxmr sim`: run seeded fault schedules against the core and report invariant violations."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections import Counter

import click

from paxmr.sim.faults import FAULT_KINDS, KNOWN_KINDS, WORKLOAD_KINDS
from paxmr.sim.members import OPERATIONS
from paxmr.sim.run import SCHEDULES, TIMED, run_seeds
from paxmr.sim.simulation import DRIVERS, EARLY


def _parse_faults(_ctx: click.Context, _param: click.Parameter, value: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in value.split(",") if k.strip() and k.strip() != "none")
    unknown = sorted(kinds - set(KNOWN_KINDS))
    if unknown:
        raise click.BadParameter(f"unknown fault kinds {unknown}; known: {','.join(KNOWN_KINDS)}")
    return kinds


def replay_command(  # noqa: PLR0917 - one run's parameters
    seed: int,
    nodes: int,
    kinds: frozenset[str],
    driver: str,
    schedule: str = TIMED,
    announce_delay: float = 0.0,
) -> str:
    faults = ",".join(k for k in KNOWN_KINDS if k in kinds) or "none"
    args = ["--seed", str(seed), "--seeds", "1", "--nodes", str(nodes), "--faults", faults]
    if driver != EARLY:
        args += ["--driver", driver]
    if schedule != TIMED:
        args += ["--schedule", schedule]
    if announce_delay:
        args += ["--announce-delay", str(announce_delay)]
    return shlex.join(["paxmr", "sim", *args, "--trace"])


@click.command("sim")
@click.option(
    "--seeds",
    "count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="How many seeds to run.",
)
@click.option(
    "--seed",
    "first",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First seed; seeds first .. first+N-1 run.",
)
@click.option("--nodes", type=click.Choice(["3", "5", "7"]), default="3", show_default=True)
@click.option(
    "--faults",
    "kinds",
    default=",".join(FAULT_KINDS + WORKLOAD_KINDS),
    show_default=True,
    callback=_parse_faults,
    help="Comma-separated fault kinds, or 'none'. Off by default: the operator mistakes"
    " stale-members (async and forget schedules), reinit and restore-old (async) (README).",
)
@click.option(
    "--driver",
    type=click.Choice(DRIVERS),
    default=EARLY,
    show_default=True,
    help="When effects leave relative to the commit: strict (all after), early (only Prepare"
    " and acceptor replies after, as the PRM does), unsafe (none after: broken on purpose).",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=TIMED,
    show_default=True,
    help="timed: a virtual clock, faults, then healing, checking safety and liveness. async: a"
    " seeded scheduler picks every event (any message in flight, any timer) for 500 steps,"
    " checking safety; it reaches orders of events that clocks make rare. small: short"
    " scenarios (3 requests, at most 16 phases) in phases of who can talk to whom, messages"
    " held across phases and replayed, leaders usurped by the majority that knows least,"
    " checking safety; each seed is one walk, so --seeds bounds the search. forget: the"
    " small walks on the forgotten-promise story (a voter loses its disk right after"
    " promising, fences while the candidate is kept away, and the candidate's phase 1"
    " finishes late).",
)
@click.option("--trace", is_flag=True, help="Print every event of each run.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    help="text or json [default: paxmr's own -o, else text].",
)
@click.option(
    "--announce-delay",
    type=click.FloatRange(min=0, max=0.05),
    default=0.0,
    show_default=True,
    help="The core's CoreConfig.announce_delay in seconds (the PRM runs 0.02): how long a"
    " leader may keep a decision on its own client's request from its followers. 0 announces"
    " at once, as the broken-core tests' bounds were measured.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="Worker processes.",
)
def sim(  # noqa: PLR0917 - click passes options as arguments
    count: int,
    first: int,
    nodes: str,
    kinds: frozenset[str],
    driver: str,
    schedule: str,
    trace: bool,
    output: str | None,
    announce_delay: float,
    workers: int,
) -> None:
    """Run seeded schedules (clients, faults, healing) and check the log's invariants."""
    output = output or click.get_current_context().find_root().params.get("output") or "text"
    size = int(nodes)
    started = time.monotonic()
    steps = commits = 0
    faults: Counter[str] = Counter()
    changes: Counter[str] = Counter()
    violations: list[dict[str, object]] = []
    traces: dict[int, list[str]] = {}
    seeds = range(first, first + count)
    for result in run_seeds(seeds, size, kinds, driver, trace, workers, schedule, announce_delay):
        steps += result.steps
        commits += result.commits
        faults += result.faults
        changes += result.changes
        if trace:
            traces[result.seed] = result.trace
        violations.extend(
            {
                "seed": result.seed,
                "violation": text,
                "replay": replay_command(
                    result.seed, size, kinds, driver, schedule, announce_delay
                ),
            }
            for text in result.violations
        )
    elapsed = time.monotonic() - started
    fault_counts = {kind: faults[kind] for kind in KNOWN_KINDS if kind in kinds}
    report: dict[str, object] = {
        "runs": count,
        "nodes": size,
        "driver": driver,
        "schedule": schedule,
        "violations": violations,
        "steps": steps,
        "commits": commits,
        "faults": fault_counts,
        "membership_changes": {op: changes[op] for op in OPERATIONS if changes[op]},
        "seconds": round(elapsed, 3),
        "seeds_per_second": round(count / elapsed, 1) if elapsed else None,
    }
    if output == "json":
        if trace:
            report["traces"] = {str(seed): lines for seed, lines in traces.items()}
        click.echo(json.dumps(report, indent=2))
    else:
        for seed, lines in traces.items():
            click.echo(f"--- seed {seed}")
            click.echo("\n".join(lines))
        fault_text = ", ".join(f"{k} {v}" for k, v in fault_counts.items()) or "none"
        click.echo(f"{count} runs, {steps} steps, {commits} commits in {elapsed:.1f}s")
        click.echo(f"faults: {fault_text}")
        if "member" in kinds:
            took = ", ".join(f"{op} {changes[op]}" for op in OPERATIONS if changes[op]) or "none"
            click.echo(f"membership changes that took effect: {took}")
        for v in violations:
            click.echo(f"VIOLATION seed {v['seed']}: {v['violation']}\n  replay: {v['replay']}")
        click.echo(f"{len(violations)} violations")
    if violations:
        sys.exit(1)
