"""Membership driven by the inventory (issue 9): an operator changes the inventory and runs
site.yml again; the play adds and removes members through the log, one change at a time, while
replicates run throughout. The tests run in order on one cluster: replace paxmr3 by a fresh host
on a new address (paxmr4), grow to five (paxmr3 back on a fresh disk, paxmr5), a shrink refused for
want of a quorum (which is also the grow's second run: it changes nothing up to the refusal), then
shrink to paxmr1..3 again, which the later deploy tests expect."""

from __future__ import annotations

import collections
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, which Ansible brings, ships no types

from testbed.testbed import Testbed
from tests.support.hosts import INVENTORY, Cluster, Load, PlaybookRun, playbook

pytestmark = pytest.mark.deploy

# Members all along: the replicates run on them.
LOADED = ["paxmr1", "paxmr2"]


def _node_id(host: str) -> int:
    return int(host.removeprefix("paxmr"))


def _inventory(bed: Testbed, hosts: list[str], retire: list[str]) -> Path:
    """The testbed's inventory with `hosts` as the cluster and `retire` marked paxmr_retire,
    written beside it: the same group_vars, CA (credentials/) and wheelhouse, as an operator's
    edited inventory has."""
    base = yaml.safe_load(INVENTORY.read_text())
    base["paxmr_nodes"]["hosts"] = {
        host: {"ansible_host": bed.address(host), "paxmr_peer_address": bed.address(host),
               "paxmr_node_id": _node_id(host), **({"paxmr_retire": True} if host in retire else {})}
        for host in hosts + retire
    }  # fmt: skip
    path = INVENTORY.with_name(f"members-{len(hosts)}-{len(retire)}.yml")
    path.write_text(yaml.safe_dump(base))
    return path


def _members(bed: Testbed, host: str) -> dict[int, str]:
    out = bed.run(host, "sudo paxmr -o json member list", timeout=30).stdout
    return {m["node"]: m["role"] for m in json.loads(out)["members"]}


def _history(bed: Testbed, host: str, since: str) -> list[tuple[frozenset[int], frozenset[int]]]:
    """(voters, learners) of every membership change `host`'s PRM applied since `since`."""
    out = bed.run(
        host, f"sudo journalctl -u paxmr-prm.service -o cat --no-pager --since @{since}", timeout=30
    ).stdout
    steps = []
    for line in out.splitlines():
        if '"membership_changed"' in line:
            record = json.loads(line[line.index("{") :])
            steps.append((frozenset(record["voters"]), frozenset(record["learners"])))
    return steps


def _prm_pid(bed: Testbed, host: str) -> str:
    return bed.run(host, "systemctl show -P MainPID paxmr-prm.service").stdout.strip()


def _change(bed: Testbed, before: list[str], after: list[str]) -> PlaybookRun:
    """Run site.yml with `after` as the inventory (the hosts of `before` it drops marked
    paxmr_retire) while LOADED replicate, then check that it took effect through the log, one
    change at a time, without restarts or lost replicates, and that the retired hosts stopped."""
    retire = [h for h in before if h not in after]
    staying = [h for h in before if h in after]
    pids = {host: _prm_pid(bed, host) for host in staying}
    since = bed.run(LOADED[0], "date +%s").stdout.strip()
    loads = [Load(bed, host, "members.txt_reduced") for host in LOADED]
    for load in loads:
        load.start()
    try:
        time.sleep(3)  # replicates landing before the first change
        run = playbook("site.yml", inventory=_inventory(bed, after, retire))
        time.sleep(2)  # and after the last
    finally:
        results = [load.stop() for load in loads]
    run.check()

    # The log has the inventory's hosts as voters, and nothing else.
    assert _members(bed, LOADED[0]) == {_node_id(h): "voter" for h in after}
    for host in retire:
        state = bed.run(host, "systemctl is-active paxmr-prm.service", check=False).stdout.strip()
        assert state == "inactive", f"{host}: the PRM of a removed host is {state}"
    # No member that stayed was restarted: the change went through the log alone.
    assert {host: _prm_pid(bed, host) for host in staying} == pids, "a staying PRM restarted"
    # One change at a time (a learner added, promoted, or a member removed), never fewer voters
    # than the cluster had before or has after.
    steps = [(frozenset(_node_id(h) for h in before), frozenset[int]())]
    for step in _history(bed, LOADED[0], since):
        if step != steps[-1]:  # a PRM that starts logs the membership it holds
            steps.append(step)
    print(f"\nmembership steps: {[(sorted(v), sorted(lr)) for v, lr in steps]}")
    assert len(steps) > 1, "no membership change was applied"
    for old, new in itertools.pairwise(steps):
        moved = {n for n in old[0] | old[1] | new[0] | new[1]
                 if (n in old[0], n in old[1]) != (n in new[0], n in new[1])}  # fmt: skip
        assert len(moved) == 1, f"more than one node changed at once: {old} -> {new}"
    floor = min(len(before), len(after))
    assert min(len(voters) for voters, _ in steps) >= floor, steps

    # Every replicate the clients were told committed is in the log exactly once; every member
    # holds the same log.
    acked = [rid for result in results for rid in result.acknowledged]
    log = Cluster(bed, after).wait_converged()
    in_log = collections.Counter(e["request_id"] for e in log["entries"])
    print(
        f"{len(acked)} replicates acknowledged during a {run.seconds:.0f} s site.yml run,"
        f" {sum(len(r.retries) for r in results)} attempts retried"
    )
    assert not [line for result in results for line in result.gave_up]
    assert len(acked) >= 10, [result.output for result in results]
    assert [rid for rid in acked if in_log[rid] != 1] == []
    return run


@pytest.fixture(scope="module")
def bed(testbed: Testbed, cluster: Cluster) -> Iterator[Testbed]:
    """The deployed cluster paxmr1..3, with the tally the load replicates on LOADED; afterwards
    the spares are powered off (disks kept until `down`) and the generated inventories removed."""
    assert _members(testbed, "paxmr1") == {1: "voter", 2: "voter", 3: "voter"}
    for seed, host in enumerate(LOADED, start=1):
        Cluster(testbed).gen(host, "members.txt", "16KiB", seed)
        assert testbed.run(host, "sudo paxmr run members.txt", check=False).returncode == 0
    yield testbed
    for host in testbed.spares:
        testbed.stop(host)
    for path in INVENTORY.parent.glob("members-*.yml"):
        path.unlink()


def test_replace_a_host_by_a_fresh_one_on_a_new_address(bed: Testbed) -> None:
    bed.reset("paxmr4")
    _change(bed, ["paxmr1", "paxmr2", "paxmr3"], ["paxmr1", "paxmr2", "paxmr4"])


def test_grow_from_three_to_five_hosts(bed: Testbed) -> None:
    bed.reset("paxmr3")  # a fresh disk: its id was removed, it joins anew
    bed.reset("paxmr5")
    _change(bed, ["paxmr1", "paxmr2", "paxmr4"], ["paxmr1", "paxmr2", "paxmr3", "paxmr4", "paxmr5"])


def test_a_shrink_that_would_leave_no_quorum_is_refused(bed: Testbed) -> None:
    """paxmr2 and paxmr3 cut off from their peers (not from the controller) cannot answer healthy;
    removing node 4 would leave 1, 2, 3, 5 with only paxmr1 and paxmr5 answering. A cut, not
    `paxmr stop`: the play must see them unhealthy whatever happens to their PRMs meanwhile (a
    stopped PRM that restarts comes back resumed)."""
    hosts = ["paxmr1", "paxmr2", "paxmr3", "paxmr4", "paxmr5"]
    for host in ("paxmr2", "paxmr3"):
        bed.cut(host)
    try:
        run = playbook(
            "site.yml",
            inventory=_inventory(bed, ["paxmr1", "paxmr2", "paxmr3"], ["paxmr4", "paxmr5"]),
        )
    finally:
        bed.heal_all()
    text = " ".join(run.output.split())  # the callback folds long messages
    assert run.returncode != 0
    assert "Refusing to remove node 4" in text, run.output[-3000:]
    # The cut two do not count; paxmr5, still a voter while node 4 goes, may.
    answering = re.search(r"only \d answer healthy \(([^)]*)\), and a quorum needs 3", text)
    assert answering, run.output[-3000:]
    assert "paxmr1" in answering[1].split(", ")
    assert not {"paxmr2", "paxmr3"} & set(answering[1].split(", ")), answering[0]
    # The refusal ends the play on every host: none goes on to wait for a healthy cluster.
    assert "Wait until this node is healthy" not in text, run.output[-3000:]
    assert _members(bed, "paxmr1") == dict.fromkeys(range(1, 6), "voter")
    # Up to the refusal, nothing was left to do after the grow: a second run changes nothing.
    assert {h: r["changed"] for h, r in run.recap().items()} == dict.fromkeys(hosts, 0)
    # Cut for the whole play (about 2 min): the PRMs' connections that went unacknowledged were
    # dropped and are dialled again (transport.UNACKED_TIMEOUT), so the heal takes effect within
    # seconds, not at TCP's next retransmission (97 s after the heal in a CI run before that).
    Cluster(bed, hosts).wait_healthy()


def test_shrink_from_five_to_three_hosts(bed: Testbed) -> None:
    _change(
        bed,
        ["paxmr1", "paxmr2", "paxmr3", "paxmr4", "paxmr5"],
        ["paxmr1", "paxmr2", "paxmr3"],
    )
