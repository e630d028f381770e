"""Operator mistakes on a real local cluster, from an adversarial review of the storage's
high-water mark, cluster-id learning, membership change and founding (issue 9). A strict xfail
is a hole: its reason says what goes wrong, its docstring how it happens."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from paxmr import local
from paxmr.services import prm
from paxmr.storage import mark_path
from tests.support.cli import clean_env, paxmr
from tests.support.local import (
    UNREACHABLE,
    Node,
    running_cluster,
    service_env,
    sigkill,
    small_tally,
)
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration


def _wipe(node: Node, *, mark: bool) -> Path:
    """Remove the node's prm.db (and its -wal, -shm; and its mark if `mark`): a disk replaced."""
    db = node.settings.state_dir / "prm.db"
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), *([mark_path(db)] if mark else [])):
        path.unlink(missing_ok=True)
    return db


def _cluster_id(node: Node) -> str:
    with contextlib.closing(sqlite3.connect(node.settings.state_dir / "prm.db")) as db:
        (found,) = db.execute("SELECT cluster_id FROM identity").fetchone()
    return str(found)


def test_another_nodes_storage_copied_onto_a_node_is_made_forgetful() -> None:
    """Node 2's disk is replaced. To spare it the catch-up, the operator seeds the new disk with
    node 1's state directory (its prm.db and, as a whole-directory copy would, its prm.mark).
    Node 2 would then vote with node 1's acceptor state, having forgotten its own promises and
    accepts: as unsafe as a restored old copy. Its PRM should see that the storage is not the
    one it last wrote and start it forgetful (storage_demoted), as for an old copy put back."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        sigkill(two.prm_pid())
        db = _wipe(two, mark=True)
        source = one.settings.state_dir / "prm.db"
        shutil.copy(mark_path(source), mark_path(db))  # the mark first: the copy is newer
        with (
            contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(db)) as dst,
        ):
            src.backup(dst)
        with service_env():
            local.restart(cluster.root, 2, "prm")
        # The PRM checks its storage before it serves: told by now, or never.
        assert two.log_events("storage_demoted"), "node 2 votes with node 1's storage"


def test_refound_on_a_member_of_a_running_cluster_is_refused() -> None:
    """Node 3's disk is lost. The operator reaches for `refound` (the lost-majority way out)
    instead of restarting node 3 without state. With the cluster's own id (the one the founding
    step gave every member) the new storage would vote among the old members, which let it in,
    with promises it forgot; with a new id while nodes 1 and 2 still run the old cluster, node 3
    would only shut itself out. Both are refused, and nothing is written."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        real = _cluster_id(one)
        sigkill(three.prm_pid())
        survivor = three.settings.state_dir.parent / "survivor.db"
        source = one.settings.state_dir / "prm.db"
        with (
            contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(survivor)) as dst,
        ):
            src.backup(dst)
        db = _wipe(three, mark=False)
        for cluster_id, why in (
            (real, f"{real} is the survivor's cluster id"),
            ("second", f"runs cluster {real}. Stop every PRM of the old cluster first"),
        ):
            args = ("--from", survivor, "--cluster-id", cluster_id, "--accept-data-loss")
            result = three.cli("refound", *args)
            assert result.returncode == 1, result
            assert why in result.stderr
            assert not db.exists()
            assert mark_path(db).exists()  # still refuses `init --found`


def test_a_joining_node_learns_the_cluster_id_with_more_nodes_configured_than_answer() -> None:
    """The inventory grows from 3 hosts to 7; the play renders all seven in every paxmr.toml,
    starts the four new hosts without founding anything, then adds them one by one, each
    waiting until it votes. A new host first learns the cluster id (prm.learn_cluster) and
    neither listens nor connects until it has, so none of the new hosts answers another: node
    4, once added, hears the id from nodes 1-3 only, 3 of the 6 others, and never catches up.
    Here nodes 5-7 are configured and not running (the same to node 4)."""
    with running_cluster() as cluster:
        with service_env():
            node_id, address = local.add(cluster.root)
        new = Node(node_id, cluster.root, cluster.nodes[0].env)
        cluster.node(1).cli_json("member", "add", str(node_id), address, "--wait", "0")
        sigkill(new.prm_pid())
        _wipe(new, mark=True)  # started again as new, with the grown configuration
        with new.config.open("a") as config:
            for other in (5, 6, 7):
                config.write(f'\n[[nodes]]\nid = {other}\nhost = "127.0.0.1"\nport = {other}\n')
        after = new.prm_log.stat().st_size
        with service_env():
            local.restart(cluster.root, node_id, "prm")

        def settled() -> list[dict[str, object]]:
            learned = new.log_events("cluster_learned", after=after)
            return learned or new.log_events("cluster_unknown", after=after)[1:]  # asked twice

        wait_until(settled, "node 4 learns the cluster id or asks again", timeout=CONVERGE_S)
        assert new.log_events("cluster_learned", after=after), settled()


def test_a_node_that_lost_its_disk_votes_again_with_a_node_configured_that_is_no_member() -> None:
    """The README: a node starts with extra nodes in its list, they are not members until added.
    Node 3's disk is replaced while its paxmr.toml already lists node 4 (the inventory grew, the
    play has not added it yet). Node 3 learns the cluster id and catches up the log, but it takes
    {1, 2, 3, 4} for the founders: `member list` shows node 4 as a voter, quorum 3, and its fence
    waits for node 4's answer forever. The founders could be learned with the cluster id."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        sigkill(three.prm_pid())
        _wipe(three, mark=False)
        with three.config.open("a") as config:
            config.write('\n[[nodes]]\nid = 4\nhost = "127.0.0.1"\nport = 4\n')
        with service_env():
            local.restart(cluster.root, 3, "prm")
        wait_until(lambda: three.status()["entries"] == 1, "node 3 catches up the log")
        members = three.cli_json("member", "list")
        assert [(m["node"], m["role"]) for m in members["members"]] == [
            (1, "voter"), (2, "voter"), (3, "voter")
        ]  # fmt: skip
        wait_until(lambda: three.status()["voting"], "node 3 votes again", timeout=CONVERGE_S)


def test_a_member_founded_again_with_its_clusters_id_does_not_vote_with_what_it_forgot() -> None:
    """Node 3's disk is replaced and the founding step is run on it with the cluster's id,
    while nodes 1 and 2 could not be asked (here: founded in-process, as init does then). Its
    storage is new and votes. Its peers knew node 3 under another storage (and could tell it,
    as they tell a storage that went back in time): it should start forgetful and fence."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        real = _cluster_id(one)
        sigkill(three.prm_pid())
        _wipe(three, mark=True)
        prm.initialize(three.settings, real)
        with service_env():
            local.restart(cluster.root, 3, "prm")
        # Told by a peer at start or in a hello soon after: wait for either, or the catch-up.
        wait_until(
            lambda: three.log_events("storage_demoted") or three.status()["entries"] == 1,
            "node 3 is demoted or catches up as a voter",
            timeout=CONVERGE_S,
            retry_on=UNREACHABLE,
        )
        assert three.log_events("storage_demoted"), "node 3 votes with an empty acceptor state"


def test_a_member_founded_again_where_init_could_not_ask_is_demoted_when_it_starts(
    tmp_path: Path,
) -> None:
    """Node 3's disk is replaced on a host deployed by Ansible: its paxmr.toml names no tls_dir
    (here: node 3's file with that line removed), and a shell has no CREDENTIALS_DIRECTORY. The
    operator runs the founding step with the cluster's id. init cannot ask nodes 1 and 2, which
    run the cluster with an entry: it says so and founds (Ansible's own founding step runs it
    the same way on new hosts). The PRM can ask (it has the TLS files): a founding storage
    that has written nothing, beside peers whose log has entries, is demoted before the core is
    built (prm.compare_with_peers), so node 3 fences and catches up instead of voting with the
    promises it forgot."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        real = _cluster_id(one)
        sigkill(three.prm_pid())
        _wipe(three, mark=True)
        deployed = tmp_path / "paxmr.toml"
        deployed.write_text(
            "".join(
                line
                for line in three.config.read_text().splitlines(keepends=True)
                if not line.startswith("tls_dir")
            )
        )
        result = paxmr("-c", deployed, "init", "--found", "--cluster-id", real, env=clean_env())
        assert result.returncode == 0, result
        assert "the peers were not asked" in result.stderr
        with service_env():
            local.restart(cluster.root, 3, "prm")
        (event,) = three.log_events("storage_demoted")  # before it served: told by now
        assert "founded again over a member of a running cluster" in str(event["reason"]), event
        wait_until(lambda: three.status()["voting"], "node 3 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one, "again_reduced"))
        cluster.converged(timeout=CONVERGE_S)


def test_a_member_founded_again_before_any_entry_is_demoted_when_it_starts() -> None:
    """As above, but before the cluster logged anything: no peer's log has entries. Node 3
    voted in the first election, so its peers saw its old storage with writes: a founding
    storage that has written nothing, beside a peer that saw this node hold another storage,
    is demoted as well (prm.compare_with_peers)."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        assert one.status()["entries"] == 0
        real = _cluster_id(one)
        sigkill(three.prm_pid())
        _wipe(three, mark=True)
        prm.initialize(three.settings, real)  # as init does where it cannot ask
        with service_env():
            local.restart(cluster.root, 3, "prm")
        (event,) = three.log_events("storage_demoted")  # before it served: told by now
        assert "saw this node hold another one" in str(event["reason"]), event
        wait_until(lambda: three.status()["voting"], "node 3 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)


def test_status_says_when_a_node_is_apart_learning_the_id_or_no_member() -> None:
    """Two nodes an operator left behind say why they are unhealthy, not only "no leader": a
    new node whose `member add` was not run yet (it learns the cluster id, and the members
    refuse it until it is one), and a removed node that keeps running."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        with service_env():
            node_id, address = local.add(cluster.root)
        new = Node(node_id, cluster.root, cluster.nodes[0].env)

        def problems(node: Node) -> list[str]:
            return list(node.status_report()["problems"])

        def says(node: Node, text: str) -> bool:
            return any(text in p for p in problems(node))

        wait_until(lambda: says(new, "learning the cluster id"), "node 4 says it is learning")
        one.cli_json("member", "add", str(node_id), address, "--wait", "0")
        wait_until(lambda: not says(new, "learning the cluster id"), "node 4 learned the id")
        assert not says(three, "not a member")
        one.cli_json("member", "remove", "3")
        wait_until(lambda: says(three, "not a member of the cluster"), "node 3 says it is out")
        assert not says(one, "not a member")


def test_a_new_cluster_votes_only_once_every_founder_answered() -> None:
    """A founding storage that has written nothing runs its core only once every founder has
    answered it (prm.Prm.hear_founders). Else `init --found` run again on a member whose disk
    was lost votes beside founders that never saw its old storage while the one that did is
    away (the simulator's reinit, seed 844). Here a new cluster is founded on all three nodes
    and only nodes 1 and 2 start: they say whom they wait for and elect no one until node 3
    starts, then the cluster serves."""
    with running_cluster() as cluster:
        one, two, three = cluster.node(1), cluster.node(2), cluster.node(3)
        for node in (one, two, three):
            sigkill(node.prm_pid())
            _wipe(node, mark=True)
            prm.initialize(node.settings, "refounded")
        start = {node.id: node.prm_log.stat().st_size for node in (one, two)}
        with service_env():
            local.restart(cluster.root, 1, "prm")
            local.restart(cluster.root, 2, "prm")

        def waiting(node: Node) -> bool:
            return any("waiting for node(s) 3" in p for p in node.status_report()["problems"])

        wait_until(lambda: waiting(one) and waiting(two), "nodes 1 and 2 wait for node 3")
        assert one.log_events("founders_awaited", after=start[1])[-1]["waiting"] == [3]
        for node in (one, two):  # neither campaigned, so neither took a role
            assert node.status()["role"] == "follower"
            assert node.log_events("role_changed", after=start[node.id]) == []
        # A request meanwhile waits, as it would for a leader (up to the replicate timeout,
        # 5 s), and lands once node 3 starts; it is not refused at once.
        pending = one.popen("replicate", small_tally(one))
        time.sleep(1.0)  # it reaches node 1 while node 1 still waits
        with service_env():
            local.restart(cluster.root, 3, "prm")
        _, err = pending.communicate(timeout=30)
        assert pending.returncode == 0, err
        assert not waiting(one)
        if two.log_events("storage_demoted", after=start[2]):
            # Node 2 asked node 3 only after nodes 1 and 3 had chosen the replicate (it asks
            # every 0.25 s): a founding storage beside a log with entries cannot tell itself from
            # a member founded again, so it is demoted and its PRM ends, to start again not
            # voting and catch up (systemd restarts it; here the test does).
            with service_env():
                local.restart(cluster.root, 2, "prm")
        else:
            assert not waiting(two)
        cluster.converged(timeout=CONVERGE_S)


def test_a_replicate_on_a_node_waiting_for_its_founders_is_refused_saying_why() -> None:
    """A new cluster is founded on all three nodes and only nodes 1 and 2 start: they wait for
    node 3 (prm.Prm.hear_founders), their cores do not run. A client's replicate on node 1 can
    get no outcome until node 3 starts: it waits as it would for a leader, up to the replicate
    timeout, and is then refused with nothing submitted, saying whom the node waits for, as
    `status` does, not left as an outcome unknown (which sends the operator looking for a
    lost quorum)."""
    with running_cluster() as cluster:
        one, two, three = cluster.node(1), cluster.node(2), cluster.node(3)
        for node in (one, two, three):
            sigkill(node.prm_pid())
            _wipe(node, mark=True)
            prm.initialize(node.settings, "refounded")
        with service_env():
            local.restart(cluster.root, 1, "prm")
            local.restart(cluster.root, 2, "prm")
        wait_until(
            lambda: any("waiting for node(s) 3" in p for p in one.status_report()["problems"]),
            "node 1 waits for node 3",
        )
        done = one.cli("replicate", small_tally(one))
        assert done.returncode == 5, done  # no quorum (as the status says)
        assert "waiting for node(s) 3" in done.stderr, done.stderr
        assert "unknown" not in done.stderr, done.stderr  # nothing was submitted


def test_a_founder_of_another_cluster_is_named_as_such_by_the_nodes_waiting_for_it() -> None:
    """Nodes 1 and 2 are founded as one cluster and node 3, by mistake, as another (init run
    with another id there, or an old prm.db left on its host). All three run, and nodes 1 and
    2 wait for node 3 for ever (prm.Prm.hear_founders counts no other cluster's answer), which
    is safe. But their status should say that node 3 runs and answers as another cluster's
    node, not only that they wait for it as if it were down."""
    with running_cluster() as cluster:
        nodes = one, _, three = cluster.node(1), cluster.node(2), cluster.node(3)
        for node in nodes:
            sigkill(node.prm_pid())
            _wipe(node, mark=True)
            prm.initialize(node.settings, "another" if node is three else "refounded")
        with service_env():
            for node in nodes:
                local.restart(cluster.root, node.id, "prm")

        def problems() -> list[str]:
            return list(one.status_report()["problems"])

        wait_until(lambda: any("waiting for node(s) 3" in p for p in problems()), "node 1 waits")
        wait_until(  # node 3 runs and answered node 1 (and refused its connection)
            lambda: any("node 1 " in e["reason"] for e in three.log_events("peer_refused")),
            "node 3 refuses node 1",
        )
        wait_until(
            lambda: any("another" in p for p in problems()),
            lambda: f"node 1's status names node 3's cluster: {problems()}",
            timeout=5.0,  # node 1 asks every 0.25 s
        )


def test_a_database_left_in_rollback_mode_and_held_open_stops_the_prm_saying_why() -> None:
    """An operator inspects a stopped node's prm.db with a tool that switches it to rollback
    mode (a backup's DELETE mode, a sqlite3 shell's `PRAGMA journal_mode`) and leaves it open
    in a read. The PRM cannot put the database back in WAL mode: it refuses to start as it
    refuses a member without an address (exit 1, one line on stderr that names the file, what
    SQLite said and what to do), writes nothing, and starts with its whole log once the file
    is released."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        digest = cluster.converged(timeout=CONVERGE_S)
        entries = three.status()["entries"]
        sigkill(three.prm_pid())
        db = three.settings.state_dir / "prm.db"
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
            assert holder.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
            holder.execute("BEGIN")
            before = holder.execute("SELECT slot, value FROM log ORDER BY slot").fetchall()
            result = three.cli("serve", "prm", timeout=30)
            assert result.returncode == 1, result
            assert result.stderr.startswith(
                f"paxmr: {db} cannot be put in WAL mode (SQLite answered: database is locked)"
            ), result.stderr
            assert "Stop any other process that holds it open" in result.stderr
            assert holder.execute("SELECT slot, value FROM log ORDER BY slot").fetchall() == before
            holder.execute("COMMIT")
            assert holder.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        with service_env():
            local.restart(cluster.root, three.id, "prm")
        assert cluster.converged(timeout=CONVERGE_S) == digest
        assert three.status()["entries"] == entries
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _sessions(node: Node) -> list[tuple[int, int]]:
    with contextlib.closing(sqlite3.connect(node.settings.state_dir / "prm.db")) as db:
        return db.execute("SELECT session, start FROM sessions ORDER BY rowid").fetchall()


def test_a_second_prm_or_mapper_started_on_a_running_node_is_refused_and_changes_nothing() -> None:
    """An operator starts `paxmr serve prm` by hand on a node whose PRM runs (to watch its
    output, say). The second one emptied the first one's spool, opened a session of the storage
    under it (its peers would take the first one's frames for an ended run's) and bound the
    control socket's path anew, then stopped on the peer port in use: the node's PRM ran on
    unreachable ("prm down") until restarted. Now it is refused before it reads or writes
    anything, and so is a second mapper, whose socket's path the first one keeps."""
    with running_cluster() as cluster:
        two = cluster.node(2)
        pid = two.prm_pid()
        spooled = two.settings.state_dir / "spool" / "forwarded-tally"  # as if in flight
        spooled.write_bytes(b"paxmr-tally 1\n")
        sessions = _sessions(two)

        second = two.cli("serve", "prm", timeout=30)
        assert second.returncode == 1, second
        assert second.stderr.startswith(f"paxmr: another PRM (pid {pid}) runs on "), second
        assert "Nothing was changed" in second.stderr
        mapper = two.cli("serve", "mapper", "--id", 1, timeout=30)
        assert mapper.returncode == 1, mapper
        assert "another process listens on" in mapper.stderr, mapper.stderr

        assert spooled.exists()
        assert _sessions(two) == sessions
        status = two.cli("status")
        assert status.returncode == 0, status
        assert "prm        up" in status.stdout, status.stdout
        two.replicate(small_tally(two))
        cluster.converged(timeout=CONVERGE_S)
