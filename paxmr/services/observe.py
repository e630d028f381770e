"""What the PRM shows its operator: who it heard and when, role changes, metrics, freshness.

The consensus core stays sans-IO and knows nothing of this: the PRM feeds an ``Observer`` the
authenticated messages it delivers (``heard``), every Ready with the core's status after it
(``after_ready``) and the durations of its commits, and the Observer logs every role or leader
change, catch-up, fence and peer going silent or coming back, keeps the Prometheus metrics and
answers "is this replica healthy, and how stale is it".

Metric names follow etcd's where one exists (``etcd_server_has_leader`` ->
``paxmr_has_leader``); the README lists them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import prometheus_client as prom
from prometheus_client import CollectorRegistry

from paxmr import logs, paxos
from paxmr.paxos.messages import MAX_SLOT, Accept, CatchupRequest
from paxmr.paxos.ready import NodeStatus
from paxmr.replies import Peer

LEADER, CANDIDATE = "leader", "candidate"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
LOOP_TICK = 0.05  # seconds between the loop watch's timers (Observer.watch_loop)
LOOP_LATE = 0.2  # a timer later than this is logged: twice the default heartbeat interval


@dataclass
class _Heard:
    at: float = -math.inf  # any authenticated message
    accept_at: float = -math.inf  # an Accept (the leader's heartbeat) ...
    accept_length: int = 0  # ... and the applied length it announced


class Observer:
    def __init__(
        self,
        node_id: int,
        peers: list[int],
        membership: paxos.Membership,
        db: Path,
        election_max: float,
    ) -> None:
        self.node_id = node_id
        self.db = db
        self.window = election_max  # "recently" = within the longest election timeout
        self.log = logs.get()
        self.heard: dict[int, _Heard] = {}
        self._up: set[int] = set()
        self.set_members(peers, membership)
        self.started = time.monotonic()
        self._last: tuple[str, int | None, tuple[int, int]] | None = None
        self._catchup: tuple[float, int] | None = None  # (since, from length) while fetching
        self._voting: bool | None = None
        self.status: NodeStatus | None = None
        # Why this node does not talk to its peers yet (it is learning the cluster id).
        self.apart: str | None = None

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.has_leader = prom.Gauge(
            "paxmr_has_leader", "1 if this replica knows a leader it heard recently", registry=r
        )
        self.is_leader = prom.Gauge("paxmr_is_leader", "1 if this replica leads", registry=r)
        self.leader_changes = prom.Counter(
            "paxmr_leader_changes_seen", "Leader changes this replica has seen", registry=r
        )
        self.role_changes = prom.Counter(
            "paxmr_role_changes", "Role changes of this replica", ["role"], registry=r
        )
        self.ballot_round = prom.Gauge(
            "paxmr_ballot_round", "Round of the highest ballot this replica promised", registry=r
        )
        self.stopped = prom.Gauge("paxmr_stopped", "1 while stopped by `paxmr stop`", registry=r)
        self.voting = prom.Gauge(
            "paxmr_voting", "1 if this replica votes (0 while it recovers lost storage)", registry=r
        )
        self.slots = prom.Gauge(
            "paxmr_log_chosen_slots", "Chosen slots applied here (no-ops included)", registry=r
        )
        self.entries = prom.Gauge(
            "paxmr_log_entries", "Log entries (positions) applied here", registry=r
        )
        self.behind = prom.Gauge(
            "paxmr_log_behind_slots", "Slots the leader announced that are not applied here",
            registry=r,
        )  # fmt: skip
        self.applied = prom.Counter(
            "paxmr_applied_slots", "Slots applied since this process started", registry=r
        )
        self.peers_heard = prom.Gauge(
            "paxmr_peers_heard", "Peers heard within the last election timeout", registry=r
        )
        self.fsync = prom.Histogram(
            "paxmr_fsync_duration_seconds",
            "Duration of one storage commit (one fsync, or none for applied entries alone)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_latency = prom.Histogram(
            "paxmr_replicate_duration_seconds", "From a replicate request to its outcome",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = prom.Counter(
            "paxmr_replicate_requests", "Replicate requests by outcome", ["outcome"], registry=r
        )
        self._replicates: dict[str, prom.Counter] = {}  # requests' child by outcome (replicated)
        self.reads = prom.Counter(
            "paxmr_reads", "Reads (print, total, merge) by consistency", ["consistency"],
            registry=r,
        )  # fmt: skip
        self.loop_lag = prom.Histogram(
            "paxmr_loop_lag_seconds",
            "How late the event loop ran a timer (heartbeats, elections and replies wait on it)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        log_bytes = prom.Gauge(
            "paxmr_storage_bytes", "Bytes of the storage files (SQLite database and WAL)",
            registry=r,
        )  # fmt: skip
        log_bytes.set_function(self._storage_bytes)
        self._gauges()

    def replicated(self, outcome: str, seconds: float) -> None:
        """A replicate request ended with `outcome` (ok, or its error's code) after `seconds`.
        The counter's child of each outcome is looked up once: labels() took 6 us a request
        (a lock and the labels' tuple), the histogram's Timer 4 more, of the leader's CPU with
        64 in flight."""
        self.commit_latency.observe(seconds)
        counter = self._replicates.get(outcome)
        if counter is None:
            counter = self._replicates[outcome] = self.requests.labels(outcome)
        counter.inc()

    async def watch_loop(self) -> None:
        """Time how late the event loop runs a timer, which every heartbeat, election timeout
        and reply waits on, and log each one later than LOOP_LATE with the CPU time meanwhile
        of the loop's thread and of the whole process: the loop's own work shows as its
        thread's, other threads holding the GIL as the process's alone, and a machine with no
        core free for the PRM as little of either (`paxmr bench scale` sorts its phases' late
        timers so)."""
        loop = asyncio.get_running_loop()
        while True:
            start, thread, process = loop.time(), time.thread_time(), time.process_time()
            await asyncio.sleep(LOOP_TICK)
            late = max(loop.time() - start - LOOP_TICK, 0.0)
            self.loop_lag.observe(late)
            if late > LOOP_LATE:
                self.log.warning(
                    "loop_late", seconds=round(late, 3),
                    loop_cpu=round(time.thread_time() - thread, 3),
                    process_cpu=round(time.process_time() - process, 3),
                )  # fmt: skip

    def set_members(self, peers: list[int], membership: paxos.Membership) -> None:
        """Whom this node hears from, and who votes (the log's membership, paxos.membership)."""
        self.peers = sorted(peers)
        self.voters = membership.voters - {self.node_id}
        self.quorum = membership.quorum
        self.heard = {p: self.heard.get(p) or _Heard() for p in self.peers}
        self._up &= set(self.peers)

    # --- inputs ----------------------------------------------------------------------------

    def heard_from(self, src: int, msg: paxos.Message, now: float) -> None:
        """An authenticated message from ``src`` (the transport drops anything else)."""
        h = self.heard.get(src)
        if h is None:
            return
        h.at = now
        if isinstance(msg, Accept):
            h.accept_at, h.accept_length = now, msg.length

    def after_ready(self, s: NodeStatus, ready: paxos.Ready) -> None:
        """A Ready carried out and the core's status after it: log and count role, leader and
        ballot changes, catch-ups and fences."""
        self.status = s
        if ready.applied:
            self.applied.inc(len(ready.applied))
        now = time.monotonic()
        leader = self.leader(s, now)
        ballot = (s.promised.round, s.promised.node)
        key = (s.role, leader, ballot)
        last = self._last
        if key != last:
            self._last = key
            fields = {"ballot": list(ballot), "slots": s.length, "entries": s.count}
            if last is None or last[0] != s.role:
                self.role_changes.labels(s.role).inc()
                self.log.info("role_changed", new_role=s.role,
                              old_role=last and last[0], **fields)  # fmt: skip
            if (last is None and leader is not None) or (last is not None and last[1] != leader):
                if leader is not None:
                    self.leader_changes.inc()
                self.log.warning("leader_changed", leader=leader,
                                 previous=last and last[1], **fields)  # fmt: skip
        self._note_catchup(s, ready, now)
        self._note_fence(s)
        self._note_peers(now)

    def _note_catchup(self, s: NodeStatus, ready: paxos.Ready, now: float) -> None:
        """A catch-up starts when the core asks a peer for chosen entries it lacks (a
        CatchupRequest from a slot; from MAX_SLOT it is only a probe of the peer's length) and
        ends once this replica has applied as far as any peer told it the log goes (the core
        then stops asking)."""
        known = max((length for _, length in s.peer_lengths), default=0)
        if self._catchup is None:
            asked = [
                (dst, m.from_slot)
                for dst, m in ready.messages
                if isinstance(m, CatchupRequest) and m.from_slot != MAX_SLOT
            ]
            if asked:
                self._catchup = (now, s.length)
                self.log.info("catchup_started", peer=asked[0][0], from_slot=asked[0][1],
                              behind=max(0, known - s.length))  # fmt: skip
        elif s.length >= known:
            since, start = self._catchup
            self._catchup = None
            self.log.info("catchup_finished", slots=s.length, fetched=s.length - start,
                          seconds=round(now - since, 3))  # fmt: skip

    def _note_fence(self, s: NodeStatus) -> None:
        """A replica that lost its storage (or was demoted) votes only after its fence
        (paxmr/paxos/acceptor.py): log when it starts without a vote and when it votes again."""
        if s.voting == self._voting:
            return
        if not s.voting:
            self.log.warning("fence_started", reason="storage lost or demoted: not voting until"
                             " it has fenced and caught up")  # fmt: skip
        elif self._voting is not None:
            ballot = [s.promised.round, s.promised.node]
            self.log.info("fence_finished", slots=s.length, ballot=ballot)
        self._voting = s.voting

    def _note_peers(self, now: float) -> None:
        up = set(self.heard_recently(now))
        if up != self._up:
            for p in sorted(up - self._up):
                self.log.info("peer_up", peer=p)
            for p in sorted(self._up - up):
                self.log.warning("peer_down", peer=p, silent_s=round(now - self.heard[p].at, 3))
            self._up = up

    def _gauges(self) -> None:
        """Gauges read the last status when scraped (from the HTTP thread too): nothing to
        update on the driver's path. A NodeStatus is immutable, so reading it is safe."""

        def of(read: Callable[[NodeStatus], float]) -> Callable[[], float]:
            return lambda: float(read(self.status)) if self.status is not None else math.nan

        now = time.monotonic
        self.has_leader.set_function(of(lambda s: self.leader(s, now()) is not None))
        self.is_leader.set_function(of(lambda s: s.role == LEADER))
        self.ballot_round.set_function(of(lambda s: s.promised.round))
        self.stopped.set_function(of(lambda s: s.stopped))
        self.voting.set_function(of(lambda s: s.voting))
        self.slots.set_function(of(lambda s: s.length))
        self.entries.set_function(of(lambda s: s.count))
        self.behind.set_function(of(self.behind_by))
        self.peers_heard.set_function(lambda: len(self.heard_recently(now())))

    # --- what the operator asks ------------------------------------------------------------

    def heard_recently(self, now: float) -> list[int]:
        """Voters heard from within the window (learners do not make a quorum)."""
        return [p for p, h in self.heard.items() if now - h.at <= self.window and p in self.voters]

    def leader(self, s: NodeStatus, now: float) -> int | None:
        """The leader this replica follows, if it heard from it within the last election timeout.

        The core may keep naming a leader while it campaigns against it; that is no leader.
        """
        if s.stopped or s.role == CANDIDATE or s.leader is None:
            return None
        if s.leader == self.node_id:
            return s.leader if s.role == LEADER else None
        heard = self.heard.get(s.leader)
        if heard is None or now - heard.accept_at > self.window:
            return None
        return s.leader

    def behind_by(self, s: NodeStatus, applied: int | None = None) -> int:
        """Chosen slots the leader announced that this replica has not applied yet; with
        ``applied``, beyond that length (a read answers from what the PRM has stored, which
        lags the core's own length while a commit runs)."""
        if s.leader is None or s.leader == self.node_id or s.leader not in self.heard:
            return 0
        have = s.length if applied is None else applied
        return max(0, self.heard[s.leader].accept_length - have)

    def problems(self, s: NodeStatus, now: float) -> list[str]:
        """Why this replica is not healthy; empty when it is."""
        found = []
        if s.stopped:
            found.append("stopped by the operator (`paxmr resume` brings it back)")
        if not s.voting:
            found.append("recovering lost storage: not voting until caught up")
        if s.stopped:
            return found
        if self.apart:
            found.append(self.apart)
        if s.node not in s.membership.members:
            # Removed (it may be stopped), or not added yet: "no leader" alone would mislead.
            found.append(
                f"not a member of the cluster (epoch {s.membership.epoch}): removed, or not"
                " added yet (`paxmr member list` on a member)"
            )
        # A follower hears only its leader, which steps down when it loses its quorum: a leader
        # heard recently stands for a quorum. A leader (or a node without one) counts its peers.
        heard = len(self.heard_recently(now))
        leader = self.leader(s, now)
        if leader is None:
            found.append("no leader" if s.role != CANDIDATE else "no leader: election under way")
        if (leader is None or s.role == LEADER) and heard + 1 < self.quorum:
            found.append(
                f"no quorum: heard {heard} of {len(self.voters)} voting peers within"
                f" {self.window:g} s,"
                f" a quorum needs {self.quorum - 1}"
            )
        return found

    def peer_table(self, now: float, connected: set[int]) -> dict[str, Peer]:
        out = {}
        for p, h in self.heard.items():
            age = now - h.at
            out[str(p)] = Peer(
                up=age <= self.window,
                heard_s_ago=None if math.isinf(age) else round(age, 3),
                connected=p in connected,
            )
        return out

    def _storage_bytes(self) -> float:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.db}{suffix}").stat().st_size
        return total

    def exposition(self) -> str:
        return prom.generate_latest(self.registry).decode()


def serve_http(observer: Observer, host: str, port: int) -> None:
    """The Prometheus endpoint (a thread of prometheus_client); an error is logged, not fatal."""
    try:
        prom.start_http_server(port, addr=host, registry=observer.registry)
    except OSError as exc:
        observer.log.exception("metrics_endpoint_failed", host=host, port=port, error=str(exc))
    else:
        observer.log.info("metrics_endpoint", url=f"http://{host}:{port}/metrics")
