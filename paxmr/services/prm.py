"""The Paxos Replication Module: drives the sans-IO core with its storage and the peer transport.

One driver task owns the core's output: it takes a Ready, commits its persist (one fsync, in a
worker thread so the loop keeps receiving), and only then sends its messages and answers its
clients. Inputs that arrive during a commit are batched into the next Ready (group commit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib.metadata
import json
import math
import os
import random
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import Field

from paxmr import backup, chunks, control, logs, paths, paxos, stamps, tallyvalue
from paxmr import replies as r
from paxmr.catalog import Catalog
from paxmr.paxos.membership import replay
from paxmr.paxos.messages import Forward, Refuse, StatusReply, StatusRequest
from paxmr.services import daemon, heavy, observe
from paxmr.services.transport import Hello, Transport, ask_cluster
from paxmr.settings import ConfigError, NodeAddress, Settings
from paxmr.storage import Identity, Storage, StorageBusy, hold, mark_path
from paxmr.wordcount import tally

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

    from paxmr.tallyvalue import Encoded

    # A reader of an encoded value's bytes: (offset, length) -> bytes (Prm._log_object).
    Read = Callable[[int, int], Awaitable[bytes]]

T = TypeVar("T")

DB_NAME = "prm.db"
LEARN_RETRY = 2.0  # seconds between asking the peers for the cluster id (learn_cluster)
FOUNDERS_ASKED_EVERY = 0.25  # seconds between asking the founders yet to answer (hear_founders)
VERSION = importlib.metadata.version("paxmr")


def db_path(settings: Settings) -> Path:
    return settings.state_dir / DB_NAME


def backup_dir(settings: Settings) -> Path:
    return settings.state_dir / "backups"


def spool_dir(settings: Settings) -> Path:
    """Where replicate spools a large tally's value (Prm._log_object)."""
    return settings.state_dir / "spool"


def clear_spool(settings: Settings) -> None:
    """Make the spool directory empty: what is left there is from a PRM killed in the middle
    of a replicate, whose request ended with it."""
    spool = spool_dir(settings)
    spool.mkdir(mode=0o700, exist_ok=True)
    for left in spool.iterdir():
        left.unlink(missing_ok=True)


@contextlib.contextmanager
def _bad_tally() -> Iterator[None]:
    try:
        yield
    except tally.TallyError as exc:
        raise control.ControlError("bad_tally", f"not a reduced tally: {exc}") from exc


def uninitialized(settings: Settings) -> Path:
    """Where this node's storage goes; FileExistsError if it is there already, or if this node
    held one (its high-water mark is still there: storage.py)."""
    path = db_path(settings)
    if path.exists():
        raise FileExistsError(f"{path} already exists: this node is initialized")
    if (mark := mark_path(path)).exists():
        raise FileExistsError(
            f"{mark} is there: this node held a storage of a cluster, and founding it again"
            " would let it vote with promises it forgot. A node that lost its prm.db starts"
            " without init (it rejoins fenced); remove the mark only to found a new cluster"
            " on purpose"
        )
    return path


def initialize(settings: Settings, cluster_id: str | None = None) -> tuple[Path, Identity]:
    """Create the storage of a founding member of a new cluster (it may vote from the start).
    Every founding member gets the same `cluster_id`; one is made up when none is given."""
    path = uninitialized(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity(cluster_id or uuid.uuid4().hex, tuple(sorted(n.id for n in settings.nodes)))
    Storage.open(path, bootstrap=True, identity=identity, node=settings.node_id).close()
    return path, identity


async def ask_peers(
    settings: Settings, storage: Storage | None = None
) -> list[tuple[NodeAddress, Hello | None]]:
    """Each configured peer with its answer to transport.ask_cluster (None: no answer), and
    each member the log in `storage` names with an address of its own."""
    tls = settings.tls_files()
    nodes = settings.nodes if storage is None else _known_nodes(settings, storage)
    peers = [n for n in nodes if n.id != settings.node_id]
    answers = await asyncio.gather(*(ask_cluster(settings.node_id, p, tls) for p in peers))
    return list(zip(peers, answers, strict=True))


def _known_nodes(settings: Settings, storage: Storage) -> list[NodeAddress]:
    """The configured nodes and the members the stored log names (member_addresses)."""
    founding = paxos.Membership(0, frozenset(founders(settings, storage.identity())))
    try:
        return member_addresses(settings, replay(founding, storage.changes()))
    except ConfigError:  # a member without an address: Prm() refuses to start, saying so
        return list(settings.nodes)


def peers_in_a_cluster(settings: Settings, cluster_id: str | None) -> list[str]:
    """Why founding `cluster_id` here would re-found a running cluster: each configured peer
    that answers (transport.ask_cluster) and belongs to another cluster, or to this one with
    entries in its log. A founding member started before the others have run `init` belongs
    to the same cluster with an empty log: that is founding, not re-founding."""
    problems = []
    for peer, answer in asyncio.run(ask_peers(settings)):
        if answer is None or not answer.cluster:
            continue  # not running (or a node without an identity: it joined or lost its disk)
        if answer.cluster != cluster_id or answer.length:
            problems.append(
                f"node {peer.id} ({peer.host}:{peer.port}) belongs to cluster {answer.cluster}"
                f" with {answer.length} entries"
            )
    return problems


async def learn_cluster(settings: Settings, storage: Storage) -> None:
    """Give a storage without a cluster id (a node that lost its disk, or joins) its peers' id,
    and the cluster's founders, before the node talks to anyone, so that it refuses a node of
    another cluster as the founders do (transport.py): a member re-founded by mistake would
    otherwise find in it a peer that lets it in, learn the old log from it and count it in
    quorums. Asks again until `learned` finds it; a cluster whose nodes record no id (founded
    by an older paxmr) is left as it is."""
    log = logs.get()
    others = len(settings.nodes) - 1
    while others:
        answers = {peer.id: a for peer, a in await ask_peers(settings) if a is not None}
        counts = collections.Counter(a.cluster for a in answers.values())
        if found := learned(settings.node_id, [n.id for n in settings.nodes], answers):
            storage.adopt(*found)
            log.info("cluster_learned", cluster=found[0], founders=found[1], answers=dict(counts))
            return
        if len(answers) > others / 2 and set(counts) == {""}:
            return
        log.warning("cluster_unknown", answers=dict(counts), asked=others, retry_s=LEARN_RETRY)
        await asyncio.sleep(LEARN_RETRY)


def learned(
    me: int, configured: list[int], answers: dict[int, Hello]
) -> tuple[str, tuple[int, ...]] | None:
    """The cluster id that more than half of its voters other than this node answer with,
    and its founders if an answer names them; None unless exactly one id has that. Its voters
    are those the answer of that id with the longest log names (from a peer too old to name
    them: the configured nodes). So a node re-founded by mistake, one of a minority, is not
    followed, and nodes configured but not (yet) members, which answer nobody while they
    learn, do not count; nor do voters this node cannot ask (added with an address in the
    log, not in its configuration)."""
    askable = set(configured) | set(answers)
    found = []
    for cluster in {a.cluster for a in answers.values() if a.cluster}:
        theirs = [a for a in answers.values() if a.cluster == cluster]
        newest = max(theirs, key=lambda a: a.length or 0)
        voters = newest.voters if newest.voters is not None else configured
        others = [v for v in voters if v != me and v in askable]
        agree = [v for v in others if v in answers and answers[v].cluster == cluster]
        if others and len(agree) > len(others) / 2:
            found.append((cluster, next((a.founders for a in theirs if a.founders), ())))
    return found[0] if len(found) == 1 else None


async def compare_with_peers(settings: Settings, storage: Storage) -> None:
    """Before the core is built from it, ask every configured peer (transport.ask_cluster)
    and demote the storage (storage.py) when one shows that it may not vote with what it
    holds: the peer saw it further than it is (it went back in time: a VM snapshot reverted,
    the state directory restored), or it is a founding storage that has written nothing
    beside a peer of its cluster whose log has entries or that saw this node hold another
    storage (`paxmr init --found` on a member of a running cluster, which init could not see:
    no TLS files to ask with, or that peer was down). A founder that is only late loses nothing
    by it: it fences and catches up. A peer that does not answer now shows a rollback in its
    next connection's hello, and the PRM then ends (Prm._demote)."""
    for peer, answer in await ask_peers(settings, storage):
        if answer is not None and (why := shows_not_voting(storage, peer.id, answer)):
            storage.demote(why)
            return


def shows_not_voting(storage: Storage, peer: int, answer: Hello) -> str | None:
    """Why `peer`'s answer (transport.ask_cluster) shows that the storage may not vote with
    what it holds: it went back in time, or it is a founding storage that has written nothing
    beside a cluster that ran before it (stamps.founded_again). None for another cluster's
    node: the transport refuses it anyway."""
    identity = storage.identity()
    if identity and answer.cluster and answer.cluster != identity.cluster_id:
        return None
    if why := storage.behind(peer, answer.seen, answer.retired):
        return why
    if storage.pristine():
        return stamps.founded_again(peer, answer.length if answer.cluster else 0, answer.seen)
    return None


class StorageWentBack(Exception):
    """A peer showed that this node's storage went back in time; it was made forgetful."""


def founders(settings: Settings, identity: Identity | None) -> list[int]:
    """Who founded the cluster: the stored identity says (a node that lost its storage, or
    joins, learns them from its peers: learn_cluster). Without them (its peers run a paxmr
    that does not name them) it takes the configured list; the log then tells it who the
    members are, and until it knows, the voters refuse its campaigns if that list is wrong
    (paxos/membership.py)."""
    if identity is not None and identity.members:
        return list(identity.members)
    return [n.id for n in settings.nodes]


def address_of(text: str) -> tuple[str, int]:
    """ "host:port" (IPv6 hosts in brackets) as the log holds a member's address."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def member_addresses(settings: Settings, membership: paxos.Membership) -> list[NodeAddress]:
    """Where every member and configured node is: the log's address for a member added with
    one, else the configuration's. A member with neither cannot start this node."""
    configured = {n.id: n for n in settings.nodes}
    out = dict(configured)
    for node in sorted(membership.members):
        if node in membership.addresses:
            host, port = address_of(membership.addresses[node])
            out[node] = NodeAddress(id=node, host=host, port=port)
        elif node not in configured:
            raise ConfigError(
                f"node {node} is a member of this cluster (epoch {membership.epoch}) but has no"
                f" address: add it to [[nodes]] in the configuration, or remove it from the"
                f" cluster first (`paxmr member remove {node}`)"
            )
    return list(out.values())


class ReplicateArgs(control.Args):
    file: str
    request_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=paxos.MAX_REQUEST_ID
    )


class BackupArgs(control.Args):
    # A plain name in the backups directory (the PRM may write only below its state directory).
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def _request_id() -> str:
    return uuid.uuid4().hex


class MemberAddArgs(control.Args):
    node: int = Field(ge=1, le=2**31 - 1)
    address: str = Field(min_length=3, max_length=255)
    # How long to wait for the learner to catch up and become a voter before answering.
    wait: float = Field(default=30.0, ge=0, le=3600)
    request_id: str = Field(default_factory=_request_id, min_length=1, max_length=64)


class MemberRemoveArgs(control.Args):
    node: int = Field(ge=1, le=2**31 - 1)
    request_id: str = Field(default_factory=_request_id, min_length=1, max_length=64)


class ClusterArgs(control.Args):
    # How long to wait for the members' answers; those that do not answer are listed so.
    timeout: float = Field(default=3.0, gt=0, le=60)


class ReadArgs(control.Args):
    # Answer only once this replica has applied every entry committed before the read started.
    consistent: bool = False


class PositionsArgs(ReadArgs):
    positions: list[int] = Field(min_length=1)


class MergeArgs(PositionsArgs):
    top: int = Field(default=20, ge=0)


# Refusals after which the request may still be chosen: reported as an unknown outcome with the
# request id to retry with (the CLI exits 5 for no_quorum). A "busy" may come from a new leader
# while an old leader's proposal of the same request can still be chosen.
_UNKNOWN_OUTCOME = {"timeout", "no_quorum", "interrupted", "busy"}


async def keep_alive(
    work: Awaitable[T], p: control.Progress, line: dict[str, Any], every: float
) -> T:
    """Await ``work``, sending the client ``line`` every ``every`` seconds meanwhile: its wait
    for an answer starts again with every line (control.Client), so work longer than its
    timeout is answered, not given up on (a 139 MB tally took 16 s to encode at load 7, past
    the CLI's 15 s, and its retry encoded it again)."""
    task = asyncio.ensure_future(work)
    try:
        while not (await asyncio.wait({task}, timeout=every))[0]:
            await p(line)
        return task.result()
    finally:
        task.cancel()  # the client went away: the work's result is not wanted


def _unknown(code: str, reason: str, request_id: str) -> control.ControlError:
    return control.ControlError(
        code,
        f"{reason}. The outcome is unknown: the entry may still land. Retry"
        f" with --request-id {request_id} so that it lands at most once.",
        request_id=request_id,
    )


# A learner this close to the leader's applied length counts as caught up: under load it is
# never exactly level, and the rest arrives as a voter.
_CAUGHT_UP = 64


# Below this size a tally is parsed, and a value decoded, on the event loop: it costs less than
# the hand-off to a worker process. Above it, the work goes to a worker (services/heavy.py).
_INLINE = 64 * 1024  # bytes

# How long the leader may keep a decision on its own client's request from the followers,
# waiting for the next Accept to carry it (paxos.Node._announce_due): a sequential client's next
# request comes about a millisecond after its reply on an idle machine, 5-20 ms after it on a
# loaded one; the followers' local reads are at most this much staler. At 5 ms, a loaded
# machine (load average 11) sent most decisions in an Accept of their own: each follower read
# 1.83 Accepts per sequential replicate, with a driver turn, a commit and an Accepted each,
# against 1.20 at 20 ms, and the three PRMs made 3,857 Python calls per replicate against 3,256.
ANNOUNCE_DELAY = 0.02  # seconds

# Seconds between two looks for replicates past their bound (_Bounds): a bound of twice the
# replicate timeout is kept within this.
BOUND_EVERY = 1.0

# Value bytes the core puts in one accept or catch-up message (a larger value goes alone). A
# message is encoded, framed and encrypted on the event loop, where heartbeats and queries wait:
# a catch-up batch of the frame's 32 MiB held the leader's loop for 0.3-1.6 s, and `status`
# with it (paxmr bench scale, loaded 2-core machine). Smaller batches cost more messages, not
# more bytes.
_BATCH_BYTES = 2 << 20


Outcome = asyncio.Future[paxos.Committed | paxos.Refused]


class _Bounds:
    """The time by which each replicate waiting here has its outcome: the core refuses a
    request on its own timeout, and this bound only guards against a core that never answers
    (a driver stuck in a commit on a hung disk; a loop starved for longer than the timeout once
    made it fire). One timer serves every request, armed when none is and at most once per
    BOUND_EVERY: a timeout armed and cancelled around each request (asyncio.timeout) cost the
    leader 10-15 us per request, a TimerHandle and its heap's sifts."""

    def __init__(self, past: Callable[[str, Outcome], None]) -> None:
        self._past = past  # called for a request past its time without an outcome
        # (when, request id, its future), in the order they came: all have the same bound.
        self._due: collections.deque[tuple[float, str, Outcome]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, when: float, rid: str, future: Outcome) -> None:
        due = self._due
        while due and due[0][2].done():  # answered: dropped as new ones come
            due.popleft()
        due.append((when, rid, future))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        due = self._due
        while due and (due[0][0] <= now or due[0][2].done()):
            _, rid, future = due.popleft()
            if not future.done():
                self._past(rid, future)
        self._timer = None
        if due:
            when = max(due[0][0], now + BOUND_EVERY)
            self._timer = asyncio.get_running_loop().call_at(when, self._fire)


def commit_bytes(persist: paxos.Persist, summaries: list[tuple[int, str]]) -> int:
    """The value and summary bytes a commit writes (Prm._commit_here): a follower's accepts
    carry values too, up to a batch of megabytes."""
    return (
        sum(len(e.value) for e in persist.log)
        + sum(len(e.value) for _, e in persist.accepted.values())
        + sum(len(s) for _, s in summaries)
    )


class Prm:
    def __init__(self, settings: Settings, storage: Storage) -> None:  # noqa: PLR0915 - its state, set up
        self.settings = settings
        self.storage = storage
        self.log = logs.get()
        t = settings.timing
        config = paxos.CoreConfig(
            heartbeat_interval=t.heartbeat,
            election_timeout_min=t.election_min,
            election_timeout_max=t.election_max,
            max_value_bytes=settings.limits.value_bytes,
            max_in_flight=settings.limits.in_flight,
            batch_bytes=min(settings.limits.batch_bytes, _BATCH_BYTES),
            request_timeout=t.replicate_timeout,
            announce_delay=min(ANNOUNCE_DELAY, t.heartbeat),
        )
        self._config = config
        durable = storage.load(values=False)  # the core reads values back on demand
        assert durable.stored is not None
        self.node = self._core(durable)
        self.catalog = Catalog(durable.stored.digest)
        self.shown_length = durable.stored.length  # what queries see (the core runs ahead)
        self.log_bytes = durable.stored.value_bytes  # of what queries see
        self._submitted_bytes: dict[str, int] = {}  # this node's requests awaiting an outcome
        # The value and summary of each log object this node encoded and awaits: applied with
        # these very bytes, it is shown without decoding it again (_summary).
        self._encoded: dict[str, tuple[bytes, dict[str, Any]]] = {}
        # Reclaim entries applied (their slots) and when this node last applied one or started
        # (chunks.py: the leader proposes the next one no sooner than timing.chunk_reclaim after).
        self._reclaims = sorted(
            slot for rid, slot in durable.stored.chunks if chunks.is_reclaim(rid)
        )
        self._reclaimed_at = time.monotonic()
        # Redone (a crash may have come between a reclaim entry and its effect), before any
        # missing summary is made again: a manifest after one must not find its chunks.
        previous = 0
        for slot in self._reclaims:
            freed = storage.reclaim_chunks(previous, slot)
            self.log_bytes -= freed
            self.node.log.value_bytes -= freed
            previous = slot
        self._restore_catalog(durable.stored)
        # Summaries of applied positions not yet stored, and since when: they ride with the next
        # commit (_summaries_to_save).
        self._unsaved: list[tuple[int, str]] = []
        self._unsaved_since = 0.0
        self._checks: set[asyncio.Task[None]] = set()  # forwarded values being validated
        self._checking: set[str] = set()  # their request ids
        self._backing_up = False
        # Heavy work runs in worker processes, never on the loop or in its threads (the GIL):
        # client work behind an admission limit, and what applying and forwarding need apart
        # from it, so a merge storm never delays an apply (services/heavy.py).
        limits = settings.limits
        self.client_pool = heavy.Pool("heavy client", limits.heavy_workers, limits.heavy_requests)
        self.apply_pool = heavy.Pool("apply", 1)
        # Entries committed to storage, in order, waiting to be summarized and shown to queries.
        self._to_apply: asyncio.Queue[list[paxos.LogEntry]] = asyncio.Queue()
        self._progress = asyncio.Event()  # set, and replaced, whenever an entry is applied
        self.waiting: dict[str, asyncio.Future[paxos.Committed | paxos.Refused]] = {}
        self._bounds = _Bounds(self._past_bound)  # replicates' outcomes, at the latest (_outcome)
        self.reading: dict[int, asyncio.Future[int | None]] = {}  # read id -> its read index
        # Read ids start anywhere: a leader may still answer a read id of this node's previous
        # run (it waited for its quorum meanwhile), which must not answer a new read.
        self._read_ids = random.randrange(2**61)
        self._status_ids = 0
        self._views: dict[tuple[int, int], asyncio.Future[StatusReply]] = {}  # (query, node)
        self.wake = asyncio.Event()
        self._alarm: asyncio.TimerHandle | None = None  # wakes the driver (drive)
        self._beat: asyncio.TimerHandle | None = None  # heartbeats during a commit (_beaconing)
        self._beat_from: float | None = None  # a commit runs: the next beat is due after this
        self.membership = self.node.membership
        peers = [n for n in member_addresses(settings, self.membership) if n.id != settings.node_id]
        self.observer = observe.Observer(
            settings.node_id, [p.id for p in peers], self.membership, db_path(settings),
            t.election_max,
        )  # fmt: skip
        self._promoting: asyncio.Future[paxos.Committed | paxos.Refused] | None = None
        self._promote_at = 0.0  # a refused promotion is tried again at most this often
        self._went_back: str | None = None  # why a peer showed this storage went back in time
        self._waiting: set[int] = set()  # founders yet to answer a new founding storage
        self._founders_heard = asyncio.Event()  # set once its core may run (hear_founders)
        self.transport = Transport(
            settings.node_id, peers, settings.tls_files(), settings.limits.frame_bytes,
            self._deliver, cluster=identity.cluster_id if (identity := storage.identity()) else "",
            answer=self._answer, storage=storage, went_back=self._on_went_back,
        )  # fmt: skip

    def _core(self, durable: paxos.DurableState) -> paxos.Node:
        return paxos.Node(
            self.settings.node_id,
            founders(self.settings, self.storage.identity()),
            durable,
            self._config,
            random.Random(),  # election jitter, not a secret
            time.monotonic(),
        )

    def _answer(self, peer: int) -> Hello:
        """What this node tells a peer that asks (transport.ask_cluster): `paxmr init`,
        learn_cluster and compare_with_peers read it."""
        identity = self.storage.identity()
        return Hello(
            self.transport.cluster,
            length=self.node.log.length,
            stamp=self.storage.stamp,
            seen=self.storage.seen.get(peer),
            retired=self.storage.retired_of(peer),
            sessions=self.storage.sessions,
            voters=tuple(sorted(self.membership.voters)),
            founders=identity.members if identity and identity.members else None,
        )

    def _restore_catalog(self, stored: paxos.StoredLog) -> None:
        """Show the stored log as it was: the summaries stored with it, not its values. One
        missing (a crash between a commit and its summary, a log taken over) is made again."""
        saved = self.storage.summaries()
        made = []
        for rid, position, slot in stored.requests:
            body = saved.get(slot)
            if body is None:
                summary = heavy.stored_summary(str(db_path(self.settings)), slot, position)
                made.append((slot, json.dumps(summary)))
                self.log.info("summary_made", slot=slot, request_id=rid)
            else:
                summary = json.loads(body)
            self.catalog.show(summary, slot)
        if made:
            self.storage.save_summaries(made)

    def _record(self, entry: paxos.LogEntry, summary: dict[str, Any] | None) -> None:
        self.shown_length += 1  # what queries see; the core's own length runs ahead of it
        self.log_bytes += len(entry.value)
        summary = self.catalog.record(entry, summary)
        if summary is not None and "error" in summary:
            self.log.error("bad_log_object", slot=entry.slot, error=summary["error"])

    async def apply_loop(self) -> None:
        """Show committed entries to queries, in slot order; large values are summarized in a
        worker process. Entries come here only once their commit is done, so a worker that reads
        a shown position from the database finds it there (heavy.merge_slots)."""
        while True:
            entries = await self._to_apply.get()
            made = []
            for entry in entries:
                summary = None
                if entry.position is not None:
                    summary = await self._summary(entry)
                    made.append((entry.slot, json.dumps(summary)))
                self._record(entry, summary)
                if chunks.is_reclaim(entry.request_id):
                    await self._reclaim(entry)
                if entry.position is not None:
                    self.log.debug("applied", slot=entry.slot, position=entry.position)
            self._progress.set()
            self._progress = asyncio.Event()
            # Shown before they are stored: a restart makes a missing one again
            # (_restore_catalog), and a replicate's reply need not wait for this write.
            if made:
                if not self._unsaved:
                    self._unsaved_since = time.monotonic()
                self._unsaved.extend(made)

    async def _reclaim(self, entry: paxos.LogEntry) -> None:
        """Apply a reclaim entry (chunks.py): empty the chunks below the previous one that no
        manifest before it names. A second entry of the same period (same id) does nothing."""
        if self.node.log.first(entry.request_id) != (None, entry.slot):
            return
        previous = self._reclaims[-1] if self._reclaims else 0
        self._reclaims.append(entry.slot)
        self._reclaimed_at = time.monotonic()
        # On a connection of its own (Storage.reclaim_chunks): the driver's may be committing.
        freed = await asyncio.to_thread(self.storage.reclaim_chunks, previous, entry.slot)
        self.log_bytes -= freed
        self.node.log.value_bytes -= freed  # the quota's measure (_over_quota)
        self.log.info("chunks_reclaimed", slot=entry.slot, below=previous, bytes=freed)

    async def reclaim_loop(self) -> None:
        """As leader, propose a reclaim entry while chunks no whole manifest names hold their
        bytes, at most once per timing.chunk_reclaim (chunks.py)."""
        period = self.settings.timing.chunk_reclaim
        while True:
            await asyncio.sleep(period / 4)
            if self.node.role != "leader" or time.monotonic() - self._reclaimed_at < period:
                continue
            loose = await asyncio.to_thread(self.storage.loose_chunks)
            rid = chunks.reclaim_id(self._reclaims[-1] if self._reclaims else None)
            if loose and self.node.log.first(rid) is None:
                self.node.submit(paxos.Request(rid, b""), time.monotonic())
                self.wake.set()

    async def _summary(self, entry: paxos.LogEntry) -> dict[str, Any]:
        """The summary of an applied position: a chunked one is read from storage (where
        its chunks and itself are once committed) in a worker."""
        assert entry.position is not None
        encoded = self._encoded.get(entry.request_id)
        if encoded is not None and encoded[0] != entry.value:
            encoded = None  # another value chosen under its request id: shown as anyone shows it
        manifest = chunks.manifest(entry.value)  # None at a glance for a value over 1 KiB
        if manifest is None:
            if encoded is not None:
                return {**encoded[1], "position": entry.position}
            return await self._off_loop(
                len(entry.value), heavy.summary, entry.value, entry.position
            )
        db = str(db_path(self.settings))
        # A manifest this node encoded names its value, but the chunks the log holds before it
        # may be others: _replicate_chunks skips a chunk id the log holds already, whatever that
        # copy is (a peer may forward a chunk under an upload's public id first). Its own
        # summary is shown only when they hash to its value; else what every replica shows.
        if encoded is not None:  # noqa: SIM102 - a test, then the worker's hashing it may need
            if await self._off_loop(None, heavy.chunks_intact, db, entry.slot):
                return {**encoded[1], "position": entry.position}
        # Always in a worker: its cost grows with its parts too, each read several times (a
        # forged manifest of 54 KB in 54,115 one-byte chunks took 1.4-1.7 s of CPU).
        return await self._off_loop(None, heavy.stored_summary, db, entry.slot, entry.position)

    async def _off_loop(self, size: int | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the apply pool's worker when ``size`` bytes (None: any) are worth
        the hand-off; here if not, or if the worker is gone (a PRM that applies slowly beats one
        that stops applying: applying must never fail)."""
        if size is None or size > _INLINE:
            try:
                return await self.apply_pool.run(fn, *args)
            except BrokenProcessPool:  # a worker was killed (out of memory?): the pool restarts
                self.log.exception("worker_failed", pool=self.apply_pool.name)
        return fn(*args)

    async def _shown(self, slot: int) -> None:
        """Wait until queries on this replica see `slot` (the entry a replicate answers for)."""
        while self.shown_length <= slot:
            await self._progress.wait()

    def _on_went_back(self, why: str) -> None:
        """A peer saw this node's storage further than it is (storage.py): the core must not
        say another word with what it holds (drive demotes the storage and ends the PRM)."""
        self._went_back = self._went_back or why
        self.wake.set()

    def _deliver(self, src: int, msg: paxos.Message) -> None:
        if self._went_back:
            return
        self.observer.heard_from(src, msg, time.monotonic())
        if isinstance(msg, StatusRequest | StatusReply):  # the operator's, not the core's
            self._on_status_message(src, msg)
            return
        if self._waiting:  # its core does not run yet (hear_founders)
            return
        if isinstance(msg, Forward):
            # Checked before the leader proposes it: a small value at once (a follower may
            # forward all of its clients' requests together), a large one in a worker process.
            if msg.request_id in self._checking:
                return  # a follower forwards again until it hears an outcome: checked once
            if len(msg.value) <= _INLINE:
                self._take_forward(src, msg, self._invalid(msg))
                return
            if len(self._checks) >= self.settings.limits.heavy_requests:
                reason = f"{len(self._checks)} forwarded values are being checked; retry later"
                self.transport.send(src, Refuse(msg.request_id, "busy", reason))
                return
            self._checking.add(msg.request_id)
            task = asyncio.create_task(self._check_forward(src, msg))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            task.add_done_callback(lambda _t: self._checking.discard(msg.request_id))
            return
        self.node.receive(src, msg, time.monotonic())
        self.wake.set()

    async def _check_forward(self, src: int, msg: Forward) -> None:
        if self._over_quota(len(msg.value)) is None and self._validated(msg):
            error = await self._off_loop(len(msg.value), heavy.validate, msg.value)
        else:
            error = None  # refused for its quota, or checked elsewhere (_take_forward)
        self._take_forward(src, msg, error)

    def _invalid(self, msg: Forward) -> str | None:
        """Why a small forwarded value is not a log object (checked here: heavy.validate)."""
        return heavy.validate(msg.value) if self._validated(msg) else None

    @staticmethod
    def _validated(msg: Forward) -> bool:
        """Whether a forwarded value is checked as a log object: a membership change is checked
        by the core on apply, a chunk (any bytes) with its manifest."""
        return not msg.request_id.startswith((paxos.MEMBERSHIP_PREFIX, paxos.CHUNK_PREFIX))

    def _take_forward(self, src: int, msg: Forward, error: str | None) -> None:
        """Propose a forwarded request, or refuse it: over the log's quota, or not a log object
        (`error`)."""
        if not msg.request_id.startswith(paxos.MEMBERSHIP_PREFIX):
            full = self._over_quota(len(msg.value))
            if full is not None:
                self.transport.send(src, Refuse(msg.request_id, "quota", full))
                return
        if error is not None:
            self.log.warning("forward_refused", src=src, request_id=msg.request_id, error=error)
            self.transport.send(
                src, Refuse(msg.request_id, "invalid", f"not a log object: {error}")
            )
            return
        self.node.receive(src, msg, time.monotonic())
        self.wake.set()

    async def join(self) -> None:
        """Listen and connect to the peers, once this node knows its cluster: a node whose
        storage records none learns it first (learn_cluster) and stays apart until then."""
        if self.storage.identity() is None:
            self.observer.apart = (
                "learning the cluster id: talks to no peer until more than half of the"
                " cluster's other voters answer (cluster_unknown in the log; a new node is"
                " answered once added)"
            )
            await learn_cluster(self.settings, self.storage)
            self.observer.apart = None
            if (identity := self.storage.identity()) is not None:
                self.transport.cluster = identity.cluster_id
            if identity and identity.members:  # the founders learned: the log counts from them
                self.node = self._core(self.storage.load(values=False))
                if self.node.membership != self.membership:
                    self._membership_changed(self.node.membership)
                self.membership = self.node.membership
        me = self.settings.me
        await self.transport.start(self.settings.peer_bind or me.host, me.port)

    async def hear_founders(self) -> None:
        """A founding storage that has written nothing (`paxmr init --found`) runs its core
        only once every other founder has answered it (transport.ask_cluster). Run again on a
        member whose disk was lost, it would otherwise vote as a founder beside founders that
        never saw its old storage while the one that did (whose quorum chose with it) is away,
        and choose again. Every founder's answer is asked for: one that shows the cluster ran
        before it (entries in its log, this node seen with another storage) demotes it, and
        a founder whose process saw nothing of it never counted its votes. So a new cluster
        starts voting once all its founders have started; a founder late beside a running
        cluster is demoted at the first answer and catches up, as before. Meanwhile it answers
        its peers and drops what their cores send (_deliver)."""
        if not self.storage.pristine():
            self._founders_heard.set()
            return
        me = self.settings.node_id
        where = {n.id: n for n in member_addresses(self.settings, self.membership)}
        self._waiting = set(self.membership.voters) - {me}
        tls = self.settings.tls_files()
        logged: list[int] = []
        while self._waiting:
            if self._went_back:  # a peer's hello showed it meanwhile (_on_went_back)
                await self._demote(self._went_back)
            asked = sorted(self._waiting)
            answers = await asyncio.gather(*(ask_cluster(me, where[p], tls) for p in asked))
            strangers = []  # founders that answer as another cluster's node: never counted
            for peer, answer in zip(asked, answers, strict=True):
                if answer is None:
                    continue  # not running, or not reached
                if answer.cluster and answer.cluster != self.transport.cluster:
                    strangers.append(f"node {peer} answers as a node of cluster {answer.cluster}")
                    continue
                if why := shows_not_voting(self.storage, peer, answer):
                    await self._demote(why)
                self._waiting.discard(peer)
            if not self._waiting:
                break
            waiting = sorted(self._waiting)
            if logged != waiting:
                logged = waiting
                self.log.warning("founders_awaited", waiting=waiting, strangers=strangers)
            self.observer.apart = (
                f"a new founding storage: votes once every founder has answered; waiting for"
                f" node(s) {', '.join(map(str, waiting))}" + "".join(f" ({s})" for s in strangers)
            )
            await asyncio.sleep(FOUNDERS_ASKED_EVERY)
        self.observer.apart = None
        self._founders_heard.set()

    async def drive(self) -> None:
        await self.join()
        await self.hear_founders()
        # The apply worker starts now, not on first use: its start is a new interpreter that
        # imports paxmr.services.heavy (0.37 s of CPU), and a new pool's first answer took 7.9
        # and 11.4 s at load average 16. On first use that wait fell inside a request's
        # replicate timeout (5 s, 3 s in the tests): the leader checks a forwarded large value
        # there, so a follower's first replicate after a start was refused (test_assignment's
        # three concurrent runs at load 15-19: the leader proposed the two forwarded tallies
        # 3.4 s after they came).
        self.apply_pool.start()
        loop = asyncio.get_running_loop()
        while True:
            if not self.wake.is_set():
                # One timer wakes the driver by the core's next deadline (at least once a
                # second), armed again only when that deadline comes sooner than it: a deadline
                # that moved later (a follower's election timeout, on every Accept) only makes
                # it wake early once, to an empty Ready. A timer armed and cancelled on every
                # wake-up (asyncio.timeout) cost 15-25 us each, 2-4 times per replicate.
                now = time.monotonic()
                at = min(self.node.next_deadline(), now + 1.0)
                if at > now:
                    alarm = self._alarm
                    if alarm is None or at < alarm.when():
                        if alarm is not None:
                            alarm.cancel()
                        self._alarm = loop.call_at(at, self._on_alarm)
                    await self.wake.wait()
            self.wake.clear()
            if self._went_back:
                await self._demote(self._went_back)
            now = time.monotonic()
            if now >= self.node.next_deadline():
                self.node.on_timer(now)
            ready = self.node.ready()
            await self._carry_out(ready)
            status = self.node.status()
            self.observer.after_ready(status, ready)
            if status.membership is not self.membership:
                self._membership_changed(status.membership)
            if status.role == "leader":
                self._promote_caught_up(status)

    def _on_alarm(self) -> None:
        self._alarm = None
        self.wake.set()

    async def _demote(self, why: str) -> NoReturn:
        """Make the storage forgetful and end the PRM: it starts again (systemd) as a replica
        that lost its storage, which fences before it votes (the core in memory still holds
        what the storage forgot, so it cannot go on)."""
        await asyncio.to_thread(self.storage.demote, why)  # in drive: no commit runs meanwhile
        self.log.error("storage_demoted", reason=why, voting=False)
        raise StorageWentBack(why)

    def _membership_changed(self, membership: paxos.Membership) -> None:
        self.membership = membership
        try:
            addresses = member_addresses(self.settings, membership)
        except ConfigError as exc:
            # Running on: the members that can be reached still make progress.
            self.log.error("member_without_address", error=str(exc))  # noqa: TRY400 - no traceback to show
            addresses = [n for n in self.settings.nodes if n.id in membership.members]
        peers = [n for n in addresses if n.id != self.settings.node_id]
        self.transport.set_peers(peers)
        self.observer.set_members([p.id for p in peers], membership)
        self.log.warning(
            "membership_changed",
            epoch=membership.epoch,
            voters=sorted(membership.voters),
            learners=sorted(membership.learners),
        )

    def _promote_caught_up(self, status: paxos.NodeStatus) -> None:
        """The leader makes a learner that has caught up a voter, one at a time (`member add`)."""
        if self._promoting is not None and not self._promoting.done():
            return
        now = time.monotonic()
        if now < self._promote_at:
            return
        lengths = dict(status.peer_lengths)
        m = status.membership
        for learner in sorted(m.learners):
            if lengths.get(learner, -1) >= status.length - _CAUGHT_UP:
                self.log.info("member_promoting", learner=learner, epoch=m.epoch)
                self._promote_at = now + self.settings.timing.election_max
                self._promoting = self._propose_change(
                    f"promote-{learner}-{m.epoch}", [*m.voters, learner], m.learners - {learner}
                )
                return

    def _propose_change(
        self,
        request_id: str,
        voters: Iterable[int],
        learners: Iterable[int],
        addresses: dict[int, str] | None = None,
    ) -> asyncio.Future[paxos.Committed | paxos.Refused]:
        future = asyncio.get_running_loop().create_future()
        rid = self.node.change_membership(
            request_id, sorted(voters), sorted(learners), addresses or {}, time.monotonic()
        )
        self.waiting[rid] = future
        self.wake.set()
        return future

    async def _change(
        self,
        request_id: str,
        voters: Iterable[int],
        learners: Iterable[int],
        addresses: dict[int, str] | None = None,
    ) -> None:
        """Propose a membership change and wait until it is applied and took effect."""
        voters, learners = sorted(voters), sorted(learners)
        await self._founders_answered()
        future = self._propose_change(request_id, voters, learners, addresses)
        outcome = await asyncio.wait_for(future, self.settings.timing.replicate_timeout * 2)
        if isinstance(outcome, paxos.Refused):
            code = "no_quorum" if outcome.code in _UNKNOWN_OUTCOME else outcome.code
            raise control.ControlError(
                code,
                f"membership change refused or not confirmed: {outcome.reason}. If it was"
                " proposed it may still take effect: see `paxmr member list`",
            )
        m = self.node.membership
        if sorted(m.voters) != voters or sorted(m.learners) != learners:
            raise control.ControlError(
                "conflict",
                "another membership change took effect first; see `paxmr member list` and retry",
            )

    async def _carry_out(self, ready: paxos.Ready) -> None:
        """Commit the Ready's persist, holding back only what depends on it (paxos.Ready).

        Accepts, chosen entries and replies leave at once, so the leader's fsync overlaps its
        followers'; the next Ready is taken only after this commit.
        """
        early, after_commit = paxos.split(ready)
        self._release(early)
        summaries = self._summaries_to_save(bool(ready.persist))
        durable_log = paxos.reports_applied_length(after_commit)
        stalled = False
        if ready.persist or durable_log:
            with self.observer.fsync.time():
                here = self._commit_here(ready.persist, summaries, durable_log=durable_log)
                if here:
                    started = time.monotonic()
                    try:
                        self.storage.commit(
                            ready.persist, summaries, durable_log=durable_log,
                            checkpoint=False, wait=False,
                        )  # fmt: skip
                    except StorageBusy:  # another writer's lock: waited for in a worker
                        here = False
                    stalled = time.monotonic() - started > self.settings.timing.heartbeat
                if not here:
                    # An executor future, not a task around to_thread: one object less.
                    loop = asyncio.get_running_loop()
                    commit = loop.run_in_executor(
                        None,
                        functools.partial(
                            self.storage.commit, ready.persist, summaries, durable_log=durable_log
                        ),
                    )
                    await self._beaconing(commit)
            if ready.persist.log:  # their values are read back from storage from now on
                self.node.log.stored(ready.persist.log[-1].slot + 1)
        elif summaries:
            await asyncio.to_thread(self.storage.save_summaries, summaries)
        self._release(after_commit)
        if ready.applied:  # committed with this Ready's persist: shown to queries from now on
            self._to_apply.put_nowait(ready.applied)
        if stalled and self.node.role != "leader":
            # A commit on the loop (_commit_here) stood still for longer than a heartbeat
            # interval: a slow disk (its fsync, or writes the page cache throttles). The
            # leader's frames of that time wait unread in the socket: they are read before the
            # timers judge its silence (a follower whose disk held such a commit for 2.5 s
            # campaigned without this, 2e2a33d). A leader goes on at once: its own heartbeats
            # are what is late.
            await asyncio.sleep(self.settings.timing.heartbeat)

    def _commit_here(
        self, persist: paxos.Persist, summaries: list[tuple[int, str]], *, durable_log: bool
    ) -> bool:
        """Whether a commit of a few kilobytes runs on the event loop, not in a worker thread,
        never checkpointing or marking there (Storage.commit; one in a worker does that once
        Storage.upkeep_due): one without an fsync (applied entries alone: the leader's
        decision, a follower's apply) on any node, and one with an fsync on a node that does
        not lead (a follower's accepts). Either goes to a worker after all if another writer
        holds the database (StorageBusy: the loop never waits for SQLite's 5 s busy timeout,
        and a follower so held still answers reads saying how far behind it is:
        test_a_read_on_a_node_behind_says_by_how_many_slots).

        Without an fsync it writes to the page cache in tens of microseconds, where the
        hand-off to a thread and back cost a sequential replicate 0.2-0.25 ms on the leader's
        path to its reply, the worker's Python holding the GIL meanwhile (timestamps in the
        PRMs under paxmr bench replicate). A follower's loop has nothing to do during its
        accept's fsync but read the leader's next frames, which wait in the socket and come in
        the next Ready anyway; the hand-off, a wake-up of the worker and one of the loop, cost
        each follower 7-9 of its 12-15 context switches and an eighth to a quarter of its CPU
        per sequential replicate (2e2a33d's figures). A leader's fsync stays in a worker: its
        loop meanwhile reads its clients' requests and its followers' replies, and heartbeats
        through a long commit (_beaconing)."""
        if self.storage.upkeep_due() or commit_bytes(persist, summaries) > _INLINE:
            return False
        return self.node.role != "leader" or not self.storage.syncs(
            persist, durable_log=durable_log
        )

    async def _beaconing(self, commit: asyncio.Future[None]) -> None:
        """Wait for `commit`; meanwhile a leader heartbeats once per interval (Node.beacon):
        megabytes of values on a busy disk took longer to commit than the election timeout.
        One timer serves every commit (_beat_due), armed when none is: almost every commit
        ends well within one interval, and a timer armed and cancelled around each cost every
        node 5-20 us per replicate (asyncio.wait, before, made a future, a timer and two
        callbacks for each)."""
        self._beat_from = time.monotonic()
        if self._beat is None:
            due = self._beat_from + self.settings.timing.heartbeat
            self._beat = asyncio.get_running_loop().call_at(due, self._beat_due)
        try:
            await commit
        finally:
            self._beat_from = None

    def _beat_due(self) -> None:
        """Heartbeat if a commit has run an interval since it began or since the last beat;
        then wait for that again, unless no commit runs (the next one arms the timer)."""
        self._beat = None
        if self._beat_from is None:
            return
        now = time.monotonic()
        if now >= self._beat_from + self.settings.timing.heartbeat:
            for dst, msg in self.node.beacon():
                self.transport.send(dst, msg)
            self._beat_from = now
        loop = asyncio.get_running_loop()
        self._beat = loop.call_at(self._beat_from + self.settings.timing.heartbeat, self._beat_due)

    def _summaries_to_save(self, committing: bool) -> list[tuple[int, str]]:
        """The summaries to store now: all of them with a commit (in its transaction, so they
        cost neither a transaction nor a thread hop of their own), or alone once the oldest has
        waited a heartbeat for one (an idle log still stores its summaries soon). Only this
        driver writes to storage, so a summary is never written in another's transaction."""
        waited = time.monotonic() - self._unsaved_since >= self.settings.timing.heartbeat
        if not self._unsaved or not (committing or waited):
            return []
        summaries, self._unsaved = self._unsaved, []
        return summaries

    def _release(self, ready: paxos.Ready) -> None:
        for dst, msg in ready.messages:
            self.transport.send(dst, msg)
        for reply in ready.replies:
            self._submitted_bytes.pop(reply.request_id, None)
            future = self.waiting.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply.outcome)
        for read_id, index in ready.reads:
            read = self.reading.get(read_id)
            if read is not None and not read.done():
                read.set_result(index)

    # --- control operations ------------------------------------------------------------------

    async def replicate(self, args: ReplicateArgs, p: control.Progress) -> r.Replicated:
        rid = args.request_id
        if rid.startswith(paxos.CHUNK_PREFIX):
            raise control.ControlError("invalid", "this request id prefix is reserved for chunks")
        await self._founders_answered()
        part_bytes = self.settings.limits.value_bytes
        async with self._log_object(args, p) as (encoded, read):
            if encoded.size <= part_bytes:
                value = await read(0, encoded.size)
            else:
                # Larger than one value: its chunks, then the manifest that commits them
                # (chunks.py), each chunk read from the spool when it is submitted.
                manifest = chunks.manifest_of(
                    args.file, encoded.digest, encoded.sha256, encoded.size, part_bytes
                )
                value = manifest.encode()
                if rid not in self.node.log.positions:  # landed before: its chunks are in the log
                    full = self._over_quota(manifest.size)
                    if full is not None:
                        raise control.ControlError(
                            "quota", f"log full: {full}; nothing was submitted"
                        )
                    self._check_chunks_fresh(rid, manifest)
                    last = await self._replicate_chunks(rid, manifest, read, part_bytes, p)
                    await self._check_chunks_cut(rid, manifest, part_bytes, last)
        future = self.waiting.get(rid)
        if future is None:
            future = self._submit(rid, value)
            # Its summary is the object's, a manifest's too (the object its chunks, just
            # chosen, make): applying it here needs neither a decode nor an assembly.
            self._encoded[rid] = (value, encoded.summary)
        # Submitted (here or by a concurrent call with this id): from now on every failure leaves
        # the outcome unknown, and says so with the request id to retry with.
        try:
            return await self._outcome(args, future, encoded.digest)
        except control.ControlError:
            raise
        except Exception as exc:
            self.log.exception("replicate_failed", request_id=rid)
            raise _unknown("interrupted", f"replicate failed: {exc!r}", rid) from exc
        finally:
            if self._encoded.get(rid, (None,))[0] is value:
                del self._encoded[rid]

    @contextlib.asynccontextmanager
    async def _log_object(
        self, args: ReplicateArgs, p: control.Progress
    ) -> AsyncIterator[tuple[Encoded, Read]]:
        """The log object's value for the tally file `args.file` (tallyvalue.py): what was
        encoded, and a reader of its bytes (offset, length), valid in this block.

        A small tally is read whole and encoded here (cheaper than the hand-off to a worker),
        held in memory (tallyvalue.encode_whole).
        A larger one is encoded by a worker process into a spool file in the state directory
        (heavy.encode_tally), and each part is read from it when it is submitted: neither
        process holds more than a few blocks or one part of it, whatever the tally's size (a
        118 MB tally held as Python objects, copies and the packed value took the worker to
        1,267 MiB and the PRM to 536). The spool file is removed however the request ends, and
        at start-up (clear_spool) when a PRM was killed in the middle of one. Meanwhile the
        client hears every replicate timeout that the encoding goes on (`keep_alive`)."""
        with paths.open_input(self.settings.data_dir, args.file) as source:  # race-free
            st = os.fstat(source.fileno())
            limit = self.settings.limits.tally_bytes
            if st.st_size > limit:  # refused before it is read at all
                raise control.ControlError(
                    "too_large",
                    f"{args.file} is {st.st_size} bytes: over limits.tally_bytes ({limit})",
                )
            node, rid = self.settings.node_id, args.request_id
            if st.st_size <= _INLINE:
                with _bad_tally():
                    whole, encoded = tallyvalue.encode_whole(
                        source, args.file, node, rid, size=st.st_size
                    )

                async def held(offset: int, n: int) -> bytes:
                    return whole[offset : offset + n]

                yield encoded, held
                return
        spool = spool_dir(self.settings) / f"{uuid.uuid4().hex}.value"
        # Made here, not by the worker, so that removing it below is final: a worker still
        # running after this request ended (it was cancelled) cannot make it again.
        os.close(os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            with self._admitted(self.client_pool), _bad_tally():
                inode = (st.st_dev, st.st_ino, st.st_size)
                encode = functools.partial(heavy.encode_tally, node=node, rid=rid)
                encoded = await keep_alive(
                    self.client_pool.run_admitted(
                        encode, str(self.settings.data_dir), args.file, inode, str(spool)
                    ),
                    p,
                    {"encoding": args.file},
                    self.settings.timing.replicate_timeout,
                )
            fd = os.open(spool, os.O_RDONLY | os.O_CLOEXEC)
            try:

                async def spooled(offset: int, n: int) -> bytes:
                    return await asyncio.to_thread(os.pread, fd, n, offset)

                yield encoded, spooled
            finally:
                os.close(fd)
        finally:
            spool.unlink(missing_ok=True)

    def _submit(self, rid: str, value: bytes) -> asyncio.Future[paxos.Committed | paxos.Refused]:
        """Submit to the core; or refuse as busy or over quota, with nothing submitted."""
        queued = sum(self._submitted_bytes.values())
        if queued and queued + len(value) > self.settings.limits.in_flight_bytes:
            raise control.ControlError(
                "busy",
                f"{queued} value bytes submitted here await their outcome (limit"
                f" {self.settings.limits.in_flight_bytes}): nothing was submitted; retry later",
            )
        full = self._over_quota(len(value))
        if full is not None:
            raise control.ControlError("quota", f"log full: {full}; nothing was submitted")
        future = self.waiting[rid] = asyncio.get_running_loop().create_future()
        self._submitted_bytes[rid] = len(value)
        self.node.submit(paxos.Request(rid, value), time.monotonic())
        self.wake.set()
        return future

    async def _founders_answered(self) -> None:
        """A new founding storage's core does not run until every founder answered it
        (hear_founders). A request waits for that as it would for a leader, up to the
        replicate timeout (a cluster just started); then it is refused, with nothing
        submitted, saying whom the node waits for."""
        if self._founders_heard.is_set():
            return
        try:
            await asyncio.wait_for(
                self._founders_heard.wait(), self.settings.timing.replicate_timeout
            )
        except TimeoutError:
            raise control.ControlError(
                "no_quorum",
                f"{self.observer.apart or 'a new founding storage waits for its founders'}:"
                " nothing was submitted; retry later",
            ) from None

    def _check_chunks_fresh(self, rid: str, manifest: chunks.Manifest) -> None:
        """Refuse a retry whose chunks from an earlier attempt lie below the last reclaim entry:
        the next one may empty them before its manifest lands (chunks.py)."""
        last = self._reclaims[-1] if self._reclaims else -1
        for cid in manifest.chunk_ids():
            first = self.node.log.first(cid)
            if first is not None and first[1] < last:
                raise control.ControlError(
                    "conflict",
                    f"the chunks of request {rid} from an earlier attempt are older than the"
                    " last chunk reclamation: nothing was submitted; replicate it with a new"
                    " request id",
                )

    async def _check_chunks_cut(
        self, rid: str, manifest: chunks.Manifest, part_bytes: int, last: int
    ) -> None:
        """Refuse, before its manifest is submitted, a value whose chunks the log holds cut at
        other sizes: a retry's whose earlier attempt ran under another `limits.value_bytes`
        (a chunk's id is the value's digest and its index, whatever bytes the index covers),
        or a chunk another node had chosen first under its id. Its manifest would land as an
        error on every replica and use up the request id (a chunk of the right size and other
        bytes still does: _summary). The first copies of its chunks are all at `last` or
        before (the highest slot a chunk's outcome named)."""
        await self._shown(last)  # stored: the thread reads them from the database
        db = str(db_path(self.settings))
        # In a thread, not the apply pool's process: a few indexed reads of row headers, and
        # the manifest waits for them (a reclaim entry may empty chunks whose manifest is late).
        sizes = await asyncio.to_thread(heavy.chunk_sizes, db, manifest.chunk_ids())
        for index, size in enumerate(sizes):
            cut = min(part_bytes, manifest.size - index * part_bytes)
            if size and size != cut:  # an empty one was reclaimed: _check_chunks_fresh's case
                raise control.ControlError(
                    "conflict",
                    f"the log holds chunk {index + 1} of request {rid} with {size} bytes, not"
                    f" {cut} (an earlier attempt under another limits.value_bytes, or another"
                    " node's chunk under its id): its manifest was not submitted, nothing is"
                    " shown; replicate it with a new request id",
                )

    async def _replicate_chunks(
        self, rid: str, manifest: chunks.Manifest, read: Read, part_bytes: int, p: control.Progress
    ) -> int:
        """Get each chunk chosen, in order, skipping those the log holds already (a retry's),
        and say so to the client after each: its wait for an answer starts again with every
        line (control.Client), so a tally of any size is answered, not timed out half-way.
        A failure here leaves no entry (the manifest was not submitted); it still names the
        request id, whose retry reuses the chunks that landed. Returns the highest slot
        that a chunk's outcome named."""
        last = -1
        for index, cid in enumerate(manifest.chunk_ids()):
            # One already in the log is answered at once by the core (AppliedLog.first).
            where = f"chunk {index + 1} of {manifest.parts}"
            try:
                future = self.waiting.get(cid) or self._submit(
                    cid, await read(index * part_bytes, part_bytes)
                )
            except control.ControlError as exc:
                raise _unknown(exc.code, f"{where}: {exc.message}", rid) from exc
            try:
                outcome = await asyncio.wait_for(
                    asyncio.shield(future), self.settings.timing.replicate_timeout * 2
                )
            except TimeoutError:
                raise _unknown("no_quorum", f"{where}: no outcome in time", rid) from None
            if isinstance(outcome, paxos.Refused):
                code = "no_quorum" if outcome.code == "timeout" else outcome.code
                raise _unknown(code, f"{where}: {outcome.reason}", rid)
            last = max(last, outcome.slot)
            await p({"chunk": index + 1, "of": manifest.parts})
        self.log.info("chunks_replicated", request_id=rid, parts=manifest.parts,
                      bytes=manifest.size)  # fmt: skip
        return last

    async def _outcome(
        self,
        args: ReplicateArgs,
        future: asyncio.Future[paxos.Committed | paxos.Refused],
        digest: str,
    ) -> r.Replicated:
        rid = args.request_id
        self._bounds.add(time.monotonic() + self.settings.timing.replicate_timeout * 2, rid, future)
        # Shielded: a concurrent replicate with this request id awaits the same future.
        outcome = await asyncio.shield(future)
        if isinstance(outcome, paxos.Refused) and outcome.code in _UNKNOWN_OUTCOME:
            code = "no_quorum" if outcome.code in {"timeout", "no_quorum"} else outcome.code
            raise _unknown(code, outcome.reason, rid)
        if isinstance(outcome, paxos.Refused):
            raise control.ControlError(outcome.code, f"replicate refused: {outcome.reason}")
        await self._shown(outcome.slot)  # a read on this node after the reply sees it
        # What landed, as shown (decoded, or this very value: _summary): the same retry sent
        # through another node differs only in its "node" field.
        position = outcome.position
        landed = self.catalog.summaries[position] if position is not None else {}
        if (landed.get("file"), landed.get("digest")) != (args.file, digest):
            raise control.ControlError(
                "conflict",
                f"request id {rid} is already in the log at position"
                f" {outcome.position} with other content: use a new request id",
            )
        # Debug, not info: a line per replicate cost the leader 25-60 us (structlog's JSON and
        # timestamp), a twentieth of its CPU per commit with 64 in flight; the log itself
        # records every replicate, and paxmr_replicate_requests_total counts them.
        self.log.debug("replicated", file=args.file, position=outcome.position, slot=outcome.slot)
        return r.Replicated(file=args.file, position=outcome.position, slot=outcome.slot,
                            request_id=rid, digest=digest)  # fmt: skip

    def _past_bound(self, rid: str, future: Outcome) -> None:
        """A replicate past its bound (_Bounds): its outcome is unknown ("timeout", as the
        core's own), for every caller awaiting that request id; a retry submits it again."""
        if self.waiting.get(rid) is future:
            del self.waiting[rid]
        future.set_result(paxos.Refused("timeout", "no outcome within the replicate timeout"))

    @contextlib.contextmanager
    def _admitted(self, pool: heavy.Pool) -> Iterator[None]:
        """A place among the pool's admitted requests, or a "busy" refusal (nothing started)."""
        try:
            with pool.admitted():
                yield
        except heavy.Busy as exc:
            raise control.ControlError(
                "busy", f"{exc}: nothing was submitted; retry later"
            ) from exc

    def _over_quota(self, size: int) -> str | None:
        """Why a value of `size` bytes would take the log past its quota, or None. Counted on
        what this node applied plus what it has submitted and not seen applied: the quota is
        checked where a request enters (and by the leader for forwarded ones), so replicates
        racing through several nodes may overshoot it by what they hold in flight."""
        limits = self.settings.limits
        # Chosen but not yet shown to queries, and submitted here but not yet chosen.
        pending = self.node.log.value_bytes - self.log_bytes
        pending += sum(self._submitted_bytes.values())
        if limits.log_entries is not None:
            s = self.node.status()  # not free: only with a quota of entries
            if s.count + s.pending + 1 > limits.log_entries:
                return f"the log holds {s.count} entries of its quota of {limits.log_entries}"
        if limits.log_bytes is not None and self.log_bytes + pending + size > limits.log_bytes:
            return (
                f"the log holds {self.log_bytes + pending} value bytes; {size} more would"
                f" exceed its quota of {limits.log_bytes}"
            )
        return None

    def _check_positions(self, positions: list[int]) -> None:
        count = len(self.catalog.summaries)
        bad = [p for p in positions if not 0 <= p < count]
        if bad:
            s = self.node.status()
            problems = self.observer.problems(s, time.monotonic())
            behind = self.observer.behind_by(s, self.shown_length)
            if behind:
                problems.append(f"behind the leader by {behind} slots")
            note = f" (this node may be stale: {'; '.join(problems)})" if problems else ""
            have = f"the log has positions 0..{count - 1}" if count else "the log is empty"
            raise control.ControlError("bad_position", f"no log position {bad[0]}: {have}{note}")

    # Queries decode whole tallies: they run in a worker thread, off the loop that heartbeats.
    # Their results are logged too, as the assignment's PRM printed them.

    async def total(self, args: PositionsArgs, _p: control.Progress) -> r.Total:
        fresh = await self._freshness(args.consistent)
        self._check_positions(args.positions)
        total = sum(self.catalog.summaries[p]["words"] for p in args.positions)
        self.log.info("total", positions=args.positions, total=total)
        return r.Total(positions=args.positions, total=total, freshness=fresh)

    async def merge(self, args: MergeArgs, _p: control.Progress) -> r.Merged:
        fresh = await self._freshness(args.consistent)
        self._check_positions(args.positions)
        slots = [(p, self.catalog.summaries[p]["slot"]) for p in args.positions]
        # A worker process reads each listed position once from the database and merges it.
        with self._admitted(self.client_pool):
            merged = await self.client_pool.run_admitted(
                heavy.merge_slots, str(db_path(self.settings)), slots, args.top
            )
        if "error" in merged:
            raise control.ControlError("bad_entry", merged["error"])
        top = merged["words"]
        self.log.info("merge", positions=args.positions, distinct=merged["distinct"], top=top[:10])
        return r.Merged(
            positions=args.positions,
            distinct=merged["distinct"],
            total=merged["total"],
            words=top,
            freshness=fresh,
        )

    async def print_log(self, args: ReadArgs, _p: control.Progress) -> dict[str, Any]:
        """The log's summaries, shaped as replies.Printed (which the CLI validates) but not
        built as one here: a model per position would cost this loop, where heartbeats run,
        seconds for 100,000 positions (validate and dump, measured); the catalog's dicts are
        sent as they are."""
        fresh = await self._freshness(args.consistent)
        self.log.info(
            "print",
            # The count and the last few files, not the whole list: one journal line stays
            # small however long the log grows (journald shows a longer message as null).
            entries=len(self.catalog.summaries),
            last_files=[e["file"] for e in self.catalog.summaries[-5:]],
            digest=self.catalog.digest.hex(),
        )
        return {
            "entries": self.catalog.summaries,
            "digest": self.catalog.digest.hex(),
            "freshness": fresh.model_dump(mode="json"),
        }

    async def _freshness(self, consistent: bool) -> r.Freshness:
        """How this replica's answer relates to the cluster's log; waits first if consistent.

        A consistent read waits until this replica has applied up to a read index from the
        leader (paxos.Node.read_index): every entry committed before the read started. It
        fails within the replicate timeout (no_quorum) rather than answer from a stale log.
        """
        obs = self.observer
        target: int | None = None
        obs.reads.labels("consistent" if consistent else "local").inc()
        if consistent:
            deadline = time.monotonic() + self.settings.timing.replicate_timeout
            target = await self._read_index(deadline)
            # Queries answer from what this driver applied (the catalog), not the core's log.
            while self.shown_length < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._no_consistent_read(f"applied {self.shown_length} of {target} slots")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), left)
        s = self.node.status()
        now = time.monotonic()
        behind = obs.behind_by(s, self.shown_length)  # what this answer shows
        problems = obs.problems(s, now)
        if behind and not consistent:
            problems.append(f"behind the leader by {behind} slots")
        return r.Freshness(
            consistent=consistent,
            read_index=target,
            stopped=s.stopped,
            leader=obs.leader(s, now),
            behind=behind,
            warning=None if consistent or not problems else "may be stale: " + "; ".join(problems),
        )

    async def _read_index(self, deadline: float) -> int:
        """A read index from the core, asked again until `deadline`: a leader may be changing
        hands, or a request or its answer may be lost (the core does not retry)."""
        timing = self.settings.timing
        while True:
            if self.node.status().stopped:
                raise control.ControlError(  # no quorum reachable from here: exit 5
                    "no_quorum", "this node is stopped: a consistent read needs `paxmr resume`"
                )
            self._read_ids += 1
            read_id = self._read_ids
            asked = time.monotonic()
            future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self.reading[read_id] = future
            self.node.read_index(read_id, asked)
            self.wake.set()
            index = None
            try:
                wait = max(0.0, min(timing.election_max, deadline - asked))
                index = await asyncio.wait_for(future, wait)
            except TimeoutError:
                pass
            finally:
                self.reading.pop(read_id, None)
            if index is not None:
                return index
            if time.monotonic() >= deadline:
                self._no_consistent_read("no leader confirmed it still leads")
            # Refused at once (no leader known yet, or a leader changing hands): not in a spin.
            again = min(asked + timing.heartbeat, deadline)
            await asyncio.sleep(max(0.0, again - time.monotonic()))

    def _no_consistent_read(self, why: str) -> NoReturn:
        s = self.node.status()
        problems = "; ".join(self.observer.problems(s, time.monotonic()))
        raise control.ControlError(
            "no_quorum",
            f"no consistent read within {self.settings.timing.replicate_timeout:g} s: {why}"
            + (f" ({problems})" if problems else ""),
        )

    async def stop(self, _a: control.NoArgs, _p: control.Progress) -> r.Stopped:
        self.node.stop(time.monotonic())
        self.wake.set()
        self.log.warning("stopped_by_operator")
        return r.Stopped(stopped=True)

    async def resume(self, _a: control.NoArgs, _p: control.Progress) -> r.Stopped:
        self.node.resume(time.monotonic())
        self.wake.set()
        self.log.warning("resumed_by_operator")
        return r.Stopped(stopped=False)

    async def status(self, _a: control.NoArgs, _p: control.Progress) -> r.PrmStatus:
        s = self.node.status()
        now = time.monotonic()
        obs = self.observer
        replica = self._replica(s, now)
        return r.PrmStatus(
            **dict(replica),
            node=s.node,
            healthy=not replica.problems,
            behind=obs.behind_by(s),
            quorum=obs.quorum,
            in_flight=s.in_flight,
            pending=s.pending,
            log=self.usage(),
            peers=obs.peer_table(now, set(self.transport.connected)),
        )

    def _replica(self, s: paxos.NodeStatus, now: float) -> r.Replica:
        """What `status` and `view` both show."""
        return r.Replica(
            role=s.role,
            leader=self.observer.leader(s, now),
            ballot=(s.promised.round, s.promised.node),
            stopped=s.stopped,
            voting=s.voting,
            slots=s.length,
            entries=len(self.catalog.summaries),
            digest=self.catalog.digest.hex(),
            problems=self.observer.problems(s, now),
            uptime_s=round(now - self.observer.started, 1),
        )

    def usage(self) -> r.LogUsage:
        """The log's size against its quota (limits.log_bytes, limits.log_entries)."""
        limits = self.settings.limits
        full = self._over_quota(1) is not None
        return r.LogUsage(bytes=self.log_bytes, bytes_quota=limits.log_bytes,
                          entries=len(self.catalog.summaries), entries_quota=limits.log_entries,
                          full=full, heavy_running=self.client_pool.active)  # fmt: skip

    async def backup(self, args: BackupArgs, _p: control.Progress) -> r.BackupInfo:
        """A consistent, forgetful copy of this node's storage as NAME in the backups directory
        beside it (paxmr/backup.py); replicates go on meanwhile."""
        if self._backing_up:
            raise control.ControlError("busy", "a backup is already running; retry later")
        self._backing_up = True
        db = db_path(self.settings)
        where = backup_dir(self.settings)
        try:
            where.mkdir(mode=0o700, exist_ok=True)
            dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                info = await asyncio.to_thread(backup.take, db, db.parent, dir_fd, args.name)
            finally:
                os.close(dir_fd)
        finally:
            self._backing_up = False
        info["path"] = str(where / args.name)
        self.log.info("backup", **info)
        return r.BackupInfo.model_validate(info)

    async def members(self, _a: control.NoArgs, _p: control.Progress) -> r.Members:
        s = self.node.status()
        m = s.membership
        now = time.monotonic()
        lengths = dict(s.peer_lengths)
        addresses = {n.id: n for n in self.transport.addresses.values()}
        addresses[self.settings.node_id] = self.settings.me
        rows = []
        for node in sorted(m.members):
            heard = self.observer.heard.get(node)
            age = None if heard is None or math.isinf(now - heard.at) else round(now - heard.at, 3)
            applied = s.length if node == s.node else lengths.get(node)
            address = addresses.get(node)
            rows.append(r.Member(
                node=node,
                address=f"{address.host}:{address.port}" if address else None,
                role="voter" if node in m.voters else "learner",
                leader=node == self.observer.leader(s, now),
                applied=applied,
                behind=None if applied is None else max(0, s.length - applied),
                heard_s_ago=0.0 if node == s.node else age,
            ))  # fmt: skip
        return r.Members(epoch=m.epoch, quorum=m.quorum, members=rows)

    def view(self) -> r.View:
        """This replica as `paxmr status --cluster` shows it, here and on every member that
        asks (one source for both: StatusReply carries exactly this)."""
        replica = self._replica(self.node.status(), time.monotonic())
        return r.View(**dict(replica), version=VERSION, log_bytes=self.log_bytes)

    def _on_status_message(self, src: int, msg: StatusRequest | StatusReply) -> None:
        if isinstance(msg, StatusRequest):
            v = self.view()
            self.transport.send(src, StatusReply(
                msg.query_id, v.role, v.leader or 0, paxos.Ballot(*v.ballot), v.stopped,
                v.voting, v.slots, v.entries, v.digest, tuple(v.problems), v.version,
                v.log_bytes, int(v.uptime_s * 1000),
            ))  # fmt: skip
            return
        waiter = self._views.get((msg.query_id, src))
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def cluster(self, args: ClusterArgs, p: control.Progress) -> r.Cluster:
        """`paxmr member list`'s rows, each with the member's own view (`replica`, see view)
        asked of it over the peer network (StatusRequest), or `replica: None` and an `error`
        if it did not answer in time."""
        self._status_ids += 1
        query = self._status_ids
        loop = asyncio.get_running_loop()
        waits = {}
        for node in sorted(self.node.membership.members - {self.settings.node_id}):
            waits[node] = self._views[query, node] = loop.create_future()
            self.transport.send(node, StatusRequest(query))
        try:
            if waits:
                await asyncio.wait(waits.values(), timeout=args.timeout)
        finally:
            for node in waits:
                self._views.pop((query, node), None)
        listing = await self.members(control.NoArgs(), p)  # heard: the answers count too
        views: dict[int, r.View | None] = {}
        for row in listing.members:
            waiter = waits.get(row.node)
            if row.node == self.settings.node_id:
                views[row.node] = self.view()
            elif waiter is not None and waiter.done():
                got = waiter.result()
                views[row.node] = r.View(
                    role=got.role, leader=got.leader or None,
                    ballot=(got.ballot.round, got.ballot.node), stopped=got.stopped,
                    voting=got.voting, slots=got.length, entries=got.count, digest=got.digest,
                    problems=list(got.problems), version=got.version,
                    log_bytes=got.log_bytes, uptime_s=got.uptime_ms / 1000,
                )  # fmt: skip
            else:  # no answer (or a member added meanwhile, not asked)
                views[row.node] = None
        # Each member's own applied length, where it answered, against the longest reported.
        longest = max((v.slots for v in views.values() if v), default=0)
        rows = []
        for row in listing.members:
            view = views[row.node]
            if view is None:
                error = f"no answer within {args.timeout:g} s"
                rows.append(r.ClusterMember(**dict(row), replica=None, error=error))
            else:
                mine = {"applied": view.slots, "behind": longest - view.slots}
                rows.append(r.ClusterMember(**{**dict(row), **mine}, replica=view))
        return r.Cluster(epoch=listing.epoch, quorum=listing.quorum, members=rows,
                         asked_by=self.settings.node_id)  # fmt: skip

    async def member_add(self, args: MemberAddArgs, _p: control.Progress) -> r.MemberAdded:
        """Add a node as a learner; the leader makes it a voter once it has caught up."""
        m = self.node.membership
        if args.node in m.members:
            raise control.ControlError("invalid", f"node {args.node} is a member already")
        try:
            address_of(args.address)
        except ValueError as exc:
            raise control.ControlError("invalid", str(exc)) from exc
        await self._change(
            args.request_id, m.voters, m.learners | {args.node}, {args.node: args.address}
        )
        deadline = time.monotonic() + args.wait
        while args.node not in self.node.membership.voters:
            if time.monotonic() > deadline:
                return r.MemberAdded(node=args.node, role="learner", caught_up=False,
                                     epoch=self.node.membership.epoch)  # fmt: skip
            await asyncio.sleep(0.05)
        return r.MemberAdded(node=args.node, role="voter", caught_up=True,
                             epoch=self.node.membership.epoch)  # fmt: skip

    async def member_remove(self, args: MemberRemoveArgs, _p: control.Progress) -> r.MemberRemoved:
        m = self.node.membership
        if args.node not in m.members:
            raise control.ControlError("invalid", f"node {args.node} is not a member")
        voters = m.voters - {args.node}
        if not voters:
            raise control.ControlError("invalid", "the last voter cannot be removed")
        # The leader refuses a change whose voters could not make a quorum (Node).
        await self._change(args.request_id, voters, m.learners - {args.node})
        return r.MemberRemoved(node=args.node, removed=True, epoch=self.node.membership.epoch)

    async def metrics(self, _a: control.NoArgs, _p: control.Progress) -> r.Metrics:
        return r.Metrics(text=self.observer.exposition())

    async def observed_replicate(self, args: ReplicateArgs, p: control.Progress) -> r.Replicated:
        outcome = "internal"
        started = time.perf_counter()
        try:
            result = await self.replicate(args, p)
            outcome = "ok"
        except control.ControlError as exc:
            outcome = exc.code
            exc.request_id = args.request_id  # every refusal names the request, to retry with
            raise
        except paths.PathRefused as exc:
            outcome = "bad_file"
            raise control.ControlError(
                "path_refused", str(exc), request_id=args.request_id
            ) from exc
        except FileNotFoundError as exc:
            outcome = "bad_file"
            raise control.ControlError(
                "not_found", f"{exc.strerror}: {exc.filename}", request_id=args.request_id
            ) from exc
        except Exception as exc:  # before the submit (replicate catches the rest): nothing landed
            self.log.exception("replicate_failed", request_id=args.request_id)
            raise control.ControlError(
                "internal",
                f"replicate failed before anything was submitted: {exc!r}",
                request_id=args.request_id,
            ) from exc
        finally:
            self.observer.replicated(outcome, time.perf_counter() - started)
        return result

    def ops(self) -> dict[str, control.Op]:
        return {
            "replicate": control.Op(ReplicateArgs, self.observed_replicate),
            "total": control.Op(PositionsArgs, self.total),
            "merge": control.Op(MergeArgs, self.merge),
            "print": control.Op(ReadArgs, self.print_log),
            "stop": control.Op(control.NoArgs, self.stop),
            "resume": control.Op(control.NoArgs, self.resume),
            "status": control.Op(control.NoArgs, self.status),
            "metrics": control.Op(control.NoArgs, self.metrics),
            "backup": control.Op(BackupArgs, self.backup),
            "members": control.Op(control.NoArgs, self.members),
            "cluster": control.Op(ClusterArgs, self.cluster),
            "member_add": control.Op(MemberAddArgs, self.member_add),
            "member_remove": control.Op(MemberRemoveArgs, self.member_remove),
        }


async def main(settings: Settings) -> None:
    lock = hold(db_path(settings))  # before anything of the node is read or written
    try:
        await _serve(settings)
    finally:
        os.close(lock)


async def _serve(settings: Settings) -> None:
    clear_spool(settings)
    storage = Storage.open(db_path(settings), node=settings.node_id)
    await compare_with_peers(settings, storage)
    if storage.demoted:
        logs.get().error("storage_demoted", reason=storage.demoted, voting=False)
    try:
        prm = Prm(settings, storage)  # refuses a member without an address (member_addresses)
    except ConfigError:
        storage.close()
        raise
    if settings.metrics_port is not None:
        observe.serve_http(prm.observer, settings.metrics_host, settings.metrics_port)
    try:
        await daemon.serve(
            settings,
            prm.ops(),
            settings.prm_socket,
            background=[prm.drive, prm.apply_loop, prm.reclaim_loop, prm.observer.watch_loop],
        )
    finally:
        prm.client_pool.close()
        prm.apply_pool.close()
        await prm.transport.close()
        storage.close()
