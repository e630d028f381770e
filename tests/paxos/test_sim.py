"""The simulator: clean runs, reproducibility, the command, and cores broken on purpose."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from paxmr import logobject
from paxmr.paxos import Message, Persist, to_wire
from paxmr.paxos.ballot import Ballot
from paxmr.paxos.log import Entry
from paxmr.paxos.messages import Accept, AcceptedValue, CatchupReply, Forward, Promise
from paxmr.services.transport import encode, frame
from paxmr.sim.command import sim
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import FAULT_KINDS
from paxmr.sim.phases import ForgetWalk, PhaseWalk
from paxmr.sim.run import run_seed, run_seeds
from paxmr.sim.simulation import EARLY, STRICT, UNSAFE
from paxmr.sim.world import _FRAMING, CHUNKED, World
from tests.paxos.paxos_broken import (
    AcceptsLowerBallots,
    FencesWithAMajority,
    KeepsLeadingAfterConflict,
    SendsWholePromises,
    SkipsPhaseOne,
    votes_without_storage,
    words_unchecked,
)

ALL = frozenset(FAULT_KINDS)
# The fault kinds before membership changes: the bounds of CAUGHT were measured with them
# (with `member` too, the seeds move: e.g. the unsafe driver on 3 members is first caught at
# seed 893; the membership rules' own table is in test_sim_members.py).
CLASSIC = ALL - {"member"}
# The async walks' seeds and bounds were measured before the async schedule forged values: a
# forge action moves every later draw of a walk. Without `forge` an async walk is the walk it
# was then (forge did nothing there), so seed-pinned async tests name their kinds without it.
UNFORGED = frozenset({"forge"})


@pytest.mark.parametrize("nodes", [3, 5])
def test_seeds_with_every_fault_keep_the_invariants(nodes):
    results = list(run_seeds(range(60), nodes, ALL, EARLY, trace=False, workers=1))
    assert [r.violations for r in results if r.violations] == []
    assert sum(r.commits for r in results) == 60 * 40
    faults = sum((r.faults for r in results), start=results[0].faults.__class__())
    assert set(faults) == ALL  # every kind actually struck


def test_a_driver_that_commits_before_every_effect_keeps_the_invariants():
    bad = [World(seed, 3, ALL, driver=STRICT).run().violations for seed in range(40)]
    assert [v for v in bad if v] == []


def test_a_seed_replays_identically():
    first, second = run_seed(11, 3, ALL, trace=True), run_seed(11, 3, ALL, trace=True)
    assert first.trace == second.trace
    assert (first.steps, first.faults) == (second.steps, second.faults)


# Walks of the small schedule within which it finds each broken core on 5 members (see CAUGHT;
# today first in walks 372 and 25, five times each in 2,000 walks).
SMALL_UNSAFE = 750
SMALL_D1 = 300

SAFETY = ("agreement", "validity", "durability", "duplicate", "ack", "frame", "crash")


def first_violation(
    nodes: int, kinds: set[str], limit: int, schedule: str = "timed", **world: Any
) -> tuple[int, str]:
    """The first seed whose run reports a safety violation, searching at most `limit` seeds."""
    schedules = {"timed": World, "async": Explorer, "small": PhaseWalk, "forget": ForgetWalk}
    if schedule == "async":
        kinds -= UNFORGED
    for seed in range(limit):
        result = schedules[schedule](seed, nodes, frozenset(kinds), **world).run()
        found = [v for v in result.violations if v.startswith(SAFETY)]
        if found:
            return seed, found[0]
    pytest.fail(f"no violation in {limit} seeds")


# Each broken core, the schedule that finds it, and a bound on the seeds searched (about twice
# the first seed that finds it today, with every fault kind but `member`). The four defects of
# issue 8 are also replayed step by step in test_paxos_regressions.py. Defect 1 (on 5 and 7
# members) and reply-before-persist on 5 are found only by the small schedule (phases.py).
# Defect 1 cannot happen on 3 members: the old leader's value held by a follower is accepted by
# a majority of 3, so chosen. Defect 2 is found only by the forgotten-promise story (the forget
# schedule; today first in walk 1 on 5 members, 6 on 7). It cannot happen on 3 members: the
# broken fence still needs both others, and the owner of the forgotten promise refuses a lower
# fence ballot (0 of 500 forget walks on 3 members find it). A wiped voter that votes at once
# on 5 members: the forget schedule finds it in walk 9, the timed one only at seed 508.
FORGET_BOUND = 40
CAUGHT = [
    pytest.param(5, FORGET_BOUND, "forget", {"node_factory": FencesWithAMajority}, id="defect2-5"),
    pytest.param(7, FORGET_BOUND, "forget", {"node_factory": FencesWithAMajority}, id="defect2-7"),
    pytest.param(5, SMALL_UNSAFE, "small", {"driver": UNSAFE}, id="reply-before-persist-5"),
    pytest.param(5, SMALL_D1, "small", {"node_factory": KeepsLeadingAfterConflict}, id="defect1-5"),
    pytest.param(7, 200, "small", {"node_factory": KeepsLeadingAfterConflict}, id="defect1-7"),
    pytest.param(3, 600, "timed", {"driver": UNSAFE}, id="reply-before-persist-3"),
    pytest.param(3, 300, "async", {"node_factory": AcceptsLowerBallots}, id="lower-ballot-3"),
    pytest.param(5, 300, "timed", {"node_factory": AcceptsLowerBallots}, id="lower-ballot-5"),
    pytest.param(3, 350, "timed", {"node_factory": SkipsPhaseOne}, id="skip-phase-1-3"),
    pytest.param(5, 200, "timed", {"node_factory": SkipsPhaseOne}, id="skip-phase-1-5"),
    pytest.param(3, 100, "timed", {"node_factory": votes_without_storage}, id="wiped-votes-3"),
    pytest.param(
        5, FORGET_BOUND, "forget", {"node_factory": votes_without_storage}, id="wiped-votes-5"
    ),
    pytest.param(3, 100, "timed", {"node_factory": SendsWholePromises}, id="defect3-3"),
    pytest.param(5, 100, "timed", {"node_factory": SendsWholePromises}, id="defect3-5"),
]


@pytest.mark.parametrize(("nodes", "limit", "schedule", "world"), CAUGHT)
def test_a_broken_core_is_caught(nodes, limit, schedule, world):
    first_violation(nodes, set(CLASSIC), limit, schedule, **world)


def test_small_scenarios_keep_the_invariants():
    """The healthy core over the bound within which the small schedule finds the broken ones
    on 5 members (3 and 7 members: test_campaign_per_cluster_size)."""
    nodes = 5
    seeds = range(max(SMALL_UNSAFE, SMALL_D1))
    results = run_seeds(seeds, nodes, CLASSIC, EARLY, trace=False, workers=1, schedule="small")
    assert [(r.seed, r.violations) for r in results if r.violations] == []


@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_the_forgotten_promise_story_keeps_the_invariants(nodes):
    """The healthy core over the bound within which the forget schedule finds defect 2."""
    seeds = range(FORGET_BOUND)
    results = run_seeds(seeds, nodes, CLASSIC, EARLY, trace=False, workers=1, schedule="forget")
    assert [(r.seed, r.violations) for r in results if r.violations] == []


def test_acceptor_state_written_without_an_fsync_is_caught(monkeypatch):
    """A power cut takes back the latest commits made without an fsync (sim/disk.py), as
    prm.db writes a commit of applied entries alone: a storage that wrote its promises and
    accepts so would forget them. The timed schedule on 3 members first finds it at seed 3;
    with power cuts that take back nothing, in none of 300."""
    real = Persist.needs_fsync

    def acceptor_state_unsynced(self: Persist, **kw: bool) -> bool:
        return real(replace(self, promised=None, used_round=None, accepted={}), **kw)

    monkeypatch.setattr(Persist, "needs_fsync", acceptor_state_unsynced)
    _, violation = first_violation(3, set(CLASSIC), 30)
    assert violation.startswith(("agreement", "ack", "durability")), violation


@pytest.mark.parametrize("nodes", [3, 5])
def test_applying_a_value_that_raises_is_caught(monkeypatch, nodes):
    """Defect 4: a forged value that the old decode let through crashed every replica."""
    monkeypatch.setattr(logobject, "_check_words", words_unchecked)
    _, violation = first_violation(nodes, {"forge", "crash", "drop"}, 200)
    assert violation.startswith("crash"), violation


def test_command_json_report():
    result = CliRunner().invoke(sim, ["--seeds", "20", "--nodes", "5", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["runs"] == 20
    assert report["violations"] == []
    assert report["commits"] == 20 * (40 + CHUNKED)  # the chunks workload's objects too
    assert report["steps"] > 0
    assert set(report["faults"]) == ALL | {"chunks"}


@pytest.mark.parametrize("schedule", ["small", "forget"])
def test_command_small_schedules(schedule):
    result = CliRunner().invoke(
        sim, ["--schedule", schedule, "--seeds", "30", "--nodes", "5", "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["schedule"], report["runs"], report["violations"]) == (schedule, 30, [])
    assert report["commits"] > 0


def test_command_text_and_trace():
    result = CliRunner().invoke(
        sim, ["--seed", "3", "--seeds", "1", "--faults", "crash,drop", "--trace"]
    )
    assert result.exit_code == 0, result.output
    assert "--- seed 3" in result.output
    assert "0 violations" in result.output


def test_command_rejects_unknown_faults():
    result = CliRunner().invoke(sim, ["--faults", "drop,meteor"])
    assert result.exit_code == 2
    assert "meteor" in result.output


def test_a_violation_prints_the_seed_and_the_replay_command(monkeypatch):
    monkeypatch.setattr("paxmr.sim.run.World", _BrokenWorld)
    result = CliRunner().invoke(sim, ["--seeds", "1", "--seed", "4", "--faults", "drop"])
    assert result.exit_code == 1
    assert "VIOLATION seed 4" in result.output
    assert "paxmr sim --seed 4 --seeds 1 --nodes 3 --faults drop --trace" in result.output
    result = CliRunner().invoke(sim, ["--seeds", "1", "--faults", "drop", "--driver", "strict"])
    assert "--faults drop --driver strict --trace" in result.output


class _BrokenWorld(World):
    def run(self):
        result = super().run()
        result.violations.append("agreement: planted")
        return result


# The campaign's seeds by size and schedule. Where CAUGHT finds a broken core on that size and
# schedule, the healthy core runs as many seeds as before (at least the bound, timed on 3
# excepted: 600); where none does, or another test runs the healthy core over the bound
# (test_small_scenarios_keep_the_invariants: small on 5; the forgotten-promise story: forget,
# FORGET_BOUND, on 3, 5 and 7), 100. On 7 only small has a bound (defect1-7, 200). The CPU
# goes to the schedules that catch (CI: 132-143 s for 3 and 5 members with 300 of each).
CAMPAIGN = {
    3: {"timed": 300, "async": 300, "small": 100, "forget": 100},
    5: {"timed": 300, "async": 100, "small": 100, "forget": 100},
    7: {"timed": 100, "async": 100, "small": 200, "forget": 100},
}


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_campaign_per_cluster_size(nodes):
    """What `make test` runs in CI: 100 to 300 seeds of each schedule (CAMPAIGN; the campaigns of
    10,000 seeds per size are run by hand: paxmr sim --seeds 10000 --nodes N)."""
    for schedule, count in CAMPAIGN[nodes].items():
        seeds = range(count)
        results = run_seeds(seeds, nodes, ALL, EARLY, trace=False, workers=2, schedule=schedule)
        bad = [(r.seed, r.violations) for r in results if r.violations]
        assert bad == [], f"{schedule}: {bad}"


def test_the_frame_allowance_covers_the_transports_framing():
    """The simulator counts a message's msgpack encoding plus _FRAMING against its frame limit.
    The transport frames it in an envelope (src, dst, message) behind a length prefix and a
    sequence number (paxmr.services.transport.encode and frame). The allowance must cover all
    of that for any node id the settings admit (1-255), or the simulator would let pass a
    message the transport drops."""
    entry = Entry("r" * 128, b"x" * 300)
    row = AcceptedValue(2**62, Ballot(2**62, 255), entry)
    messages: list[Message] = [
        Promise(Ballot(2**62, 255), 2**62, (row, row), 2**62, voter=False, more=True),
        Accept(Ballot(2**62, 255), ((2**62, entry),), 2**62),
        CatchupReply(2**62, (entry,), 2**62),
        Forward("r" * 128, b"x" * 300),
    ]
    for msg in messages:
        bare = len(msgpack.packb(to_wire(msg), use_bin_type=True))
        for src, dst in [(1, 2), (254, 255), (1, 255)]:
            wire = len(frame(2**64 - 1, encode(src, dst, msg, 2**63 - 1)))
            assert wire - bare <= _FRAMING, (type(msg).__name__, src, dst, wire - bare)
