"""The simulator: clean runs, reproducibility, the command, and cores broken on purpose."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from paxos_broken import AcceptsLowerBallots, SkipsPhaseOne, votes_without_storage

from paxmr.sim.command import sim
from paxmr.sim.faults import FAULT_KINDS
from paxmr.sim.run import run_seed, run_seeds
from paxmr.sim.world import EARLY, STRICT, UNSAFE, World

ALL = frozenset(FAULT_KINDS)


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


SAFETY = ("agreement", "validity", "durability", "duplicate", "ack")


def first_violation(
    kinds: set[str], prefixes: tuple[str, ...] = SAFETY, limit: int = 400, **world: object
) -> str:
    """Search seeds until a run reports a violation of one of these kinds."""
    for seed in range(limit):
        result = World(seed, 3, frozenset(kinds), **world).run()  # type: ignore[arg-type]
        found = [v for v in result.violations if v.startswith(prefixes)]
        if found:
            return found[0]
    pytest.fail(f"no violation in {limit} seeds")


def test_replying_before_persisting_is_caught():
    first_violation({"lose-unsynced", "crash", "partition", "drop", "delay"}, driver=UNSAFE)


def test_accepting_a_lower_ballot_is_caught():
    first_violation({"partition", "delay", "reorder", "drop"}, node_factory=AcceptsLowerBallots)


def test_skipping_phase_one_is_caught():
    # Mostly seen as a stuck request (liveness); with enough seeds, as a diverging log too.
    kinds = {"partition", "crash", "lose-unsynced", "delay"}
    first_violation(kinds, ("liveness",), node_factory=SkipsPhaseOne)
    first_violation(kinds, node_factory=SkipsPhaseOne)


def test_voting_right_after_losing_storage_is_caught():
    first_violation({"wipe", "partition", "crash"}, node_factory=votes_without_storage)


def test_command_json_report():
    result = CliRunner().invoke(sim, ["--seeds", "20", "--nodes", "5", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["runs"] == 20
    assert report["violations"] == []
    assert report["commits"] == 20 * 40
    assert report["steps"] > 0
    assert set(report["faults"]) == ALL


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
    def run(self):  # type: ignore[no-untyped-def]
        result = super().run()
        result.violations.append("agreement: planted")
        return result


@pytest.mark.slow
def test_campaign_of_500_seeds_per_cluster_size():
    for nodes in (3, 5):
        bad = [
            r
            for r in run_seeds(range(500), nodes, ALL, EARLY, trace=False, workers=2)
            if r.violations
        ]
        assert bad == []
