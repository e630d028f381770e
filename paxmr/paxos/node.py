"""One replica of the log: acceptor, proposer and learner behind a sans-IO interface.

Inputs are method calls carrying the time (`submit`, `receive`, `on_timer`, `stop`, `resume`);
outputs accumulate until the driver calls `ready()`. Nothing here touches a socket, a clock, a
file or global randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paxmr.paxos.acceptor import Acceptor
from paxmr.paxos.ballot import ZERO, Ballot
from paxmr.paxos.client import MAX_REQUEST_ID, Committed, Refused, Reply, Request
from paxmr.paxos.leader import Proposal, plan_takeover
from paxmr.paxos.log import MEMBERSHIP_PREFIX, AppliedLog, Entry
from paxmr.paxos.membership import Membership, change_request_id, replay
from paxmr.paxos.messages import (
    MAX_BATCH,
    MAX_SLOT,
    Accept,
    Accepted,
    AcceptedValue,
    CatchupReply,
    CatchupRequest,
    Forward,
    Message,
    Nack,
    Prepare,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    ReadProbe,
    ReadProbeAck,
    Refuse,
    wire_cost,
)
from paxmr.paxos.ready import NodeStatus, Ready

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping, Sequence

    from paxmr.paxos.config import CoreConfig
    from paxmr.paxos.durable import DurableState

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"

# A node that cannot vote campaigns this far (at random) above the rounds it knows of, so that
# its ballots are new to everyone although it forgot the rounds it used (see acceptor.py).
FRESH_ROUNDS = 2**32

# Reads a leader keeps waiting for confirmation (read_index); more are refused.
MAX_READS = 4096

# Value bytes a leader re-sends to one peer per heartbeat, on average (_heartbeat): 5 MiB/s at
# the core's default 50 ms, a small share of what a peer link carries (a lost 4 MiB value goes
# again within 0.8 s), and more than a heartbeat's re-sends of small values (the simulator's: at
# most catchup_batch values of 2 KiB), which still go again on every heartbeat.
RESEND_BYTES = 256 * 1024


@dataclass(slots=True)
class _Pending:
    request: Request
    deadline: float
    # Forward again then if still not applied (the forward may have been lost). Not sooner:
    # a forward carries the whole value; a new leader gets it at once (see _on_accept).
    retry_at: float


@dataclass(slots=True)
class _Campaign:
    """Phase 1 at `ballot`. Promises arrive in pages (Promise.more); a peer counts once its
    last page is in."""

    ballot: Ballot
    from_slot: int
    fence: bool  # this node lost its storage: every peer must answer (acceptor.py)
    rows: dict[int, list[AcceptedValue]] = field(default_factory=dict)
    answered: dict[int, Promise] = field(default_factory=dict)  # complete, pages joined

    def votes(self, voters: frozenset[int]) -> int:
        return sum(1 for n, p in self.answered.items() if p.voter and n in voters)


@dataclass(frozen=True, slots=True)
class _Read:
    """A read index asked of this leader by `src` (itself for a local read) as `read_id`: it
    is `index` once a quorum answered round `seq` of ReadProbes (read_index)."""

    src: int
    read_id: int
    seq: int
    index: int


@dataclass(slots=True)
class _Leadership:
    """Phase 2 at `ballot`, for every slot from the takeover on."""

    ballot: Ballot
    since: float
    next_slot: int
    heartbeat_at: float
    proposals: dict[int, Proposal] = field(default_factory=dict)
    unsent: list[int] = field(default_factory=list)
    proposed_ids: set[str] = field(default_factory=set)
    acked: dict[int, float] = field(default_factory=dict)
    sent_chosen: int = -1  # announce the new ballot in the next Ready even with no slots
    # When the chosen length past sent_chosen goes out in an empty Accept if no Accept with
    # entries carried it first (_announce_due); inf: not set yet.
    announce_at: float = math.inf
    reads: list[_Read] = field(default_factory=list)  # waiting for a quorum (read_index)
    read_seq: int = 0  # the ReadProbe round the waiting reads need
    read_sent: int = 0  # the last round sent
    read_acks: dict[int, int] = field(default_factory=dict)  # voter -> its highest round answered
    resent: dict[int, int] = field(default_factory=dict)  # peer -> re-sent bytes not yet paid off
    # The heartbeat the last Ready could have carried: (its peers, an empty Accept). See beacon.
    beacon: tuple[tuple[int, ...], Accept] | None = None


class Node:
    def __init__(  # noqa: PLR0917 - the driver interface fixes this signature
        self,
        node_id: int,
        members: Sequence[int],
        durable: DurableState,
        config: CoreConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        self.id = node_id
        # `members` founded the cluster; the log says who is a member now (membership.py).
        self.log = AppliedLog(durable.log, durable.stored)
        self._set_membership(replay(Membership(0, frozenset(members)), self.log.changes))
        self.config = config
        self._rng = rng
        self._now = now
        self.acceptor = self._make_acceptor(durable)
        self._used_round = durable.used_round
        self._seen_round = max(durable.used_round, durable.promised.round)
        self.stopped = False
        self.leader: int | None = None
        self._campaign: _Campaign | None = None
        self._lead: _Leadership | None = None
        self._pending: dict[str, _Pending] = {}
        self._heard: dict[int, float] = {}
        self._probed_at = math.inf  # a node that must fence first asks whether all peers are up
        self._peer_len: dict[int, int] = {}
        self._backoff = 1.0
        self._election_at = now + self._election_timeout()
        self._retry_at = math.inf
        self._catchup_at: float | None = None
        self._out = Ready()

    def _make_acceptor(self, durable: DurableState) -> Acceptor:
        return Acceptor(durable)

    def _set_membership(self, membership: Membership) -> None:
        self.membership = membership
        self.peers = tuple(sorted(membership.members - {self.id}))  # who gets the log
        self.voting_peers = tuple(sorted(membership.voters - {self.id}))
        self._voter_list = tuple(sorted(membership.voters))  # said in Prepares and Accepts
        self.quorum = membership.quorum

    @property
    def is_voter(self) -> bool:
        """A voter of the current epoch (whether its storage lets it vote is the acceptor's)."""
        return self.id in self.membership.voters

    @property
    def role(self) -> str:
        return LEADER if self._lead else CANDIDATE if self._campaign else FOLLOWER

    @property
    def ballot(self) -> Ballot:
        """This node's own ballot while candidate or leader."""
        own = self._lead or self._campaign
        return own.ballot if own else ZERO

    # -- driver interface -------------------------------------------------------------------

    def submit(self, request: Request, now: float) -> None:
        self._now = now
        rid = request.request_id
        if not rid:
            self._refuse(rid, "invalid", "the empty request id is reserved for no-ops")
        elif len(rid) > MAX_REQUEST_ID:
            self._refuse(rid, "invalid", f"request ids have at most {MAX_REQUEST_ID} characters")
        elif rid.startswith(MEMBERSHIP_PREFIX):
            self._refuse(
                rid, "invalid", "this request id prefix is reserved for membership changes"
            )
        else:
            self._submit(request, now)

    def change_membership(
        self,
        request_id: str,
        voters: Sequence[int],
        learners: Sequence[int],
        addresses: Mapping[int, str],
        now: float,
    ) -> str:
        """Propose that the members become `voters` and `learners` (membership.py). The reply
        comes under the returned request id: Committed without a position once the entry is
        applied; the change took effect if `membership` then shows it (a change proposed while
        another one took effect changes nothing)."""
        self._now = now
        value = self.membership.change(voters, learners, addresses)
        request = Request(change_request_id(request_id), value)
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            self._refuse(request.request_id, "invalid", "bad request id")
        else:
            self._submit(request, now)
        return request.request_id

    def _submit(self, request: Request, now: float) -> None:
        rid = request.request_id
        if self.stopped:
            self._refuse(rid, "stopped", "this node is stopped")
        elif len(request.value) > self.config.max_value_bytes:
            self._refuse(rid, "too_large", f"value exceeds {self.config.max_value_bytes} bytes")
        elif (applied := self.log.first(rid)) is not None:
            self._out.replies.append(Reply(rid, Committed(*applied)))
        elif rid in self._pending:
            return  # the reply to the first submit answers this one too
        elif len(self._pending) >= self.config.max_in_flight or (
            self._lead and self._in_flight(self._lead) >= self.config.max_in_flight
        ):
            self._refuse(rid, "busy", f"{self.config.max_in_flight} requests already in flight")
        else:
            retry_at = now + self._retry_wait(request)
            self._pending[rid] = _Pending(request, now + self.config.request_timeout, retry_at)
            self._retry_at = min(self._retry_at, retry_at)
            self._route(request)

    def read_index(self, read_id: int, now: float) -> None:
        """Ask for a read index: the applied length a read must wait for to see every entry
        committed before this call (a linearizable read, as etcd's ReadIndex). The answer comes
        in `Ready.reads` as (read_id, index), or (read_id, None) when none can be had here now
        (stopped, no leader known, the leader stepped down, a membership change under way).
        No answer at all may come (a lost message, a leader that lost its quorum): the driver
        gives up after its own deadline and may ask again.

        A leader notes the end of what it proposed, then asks its voters whether anyone outbid
        its ballot (ReadProbe); once a quorum, itself included, answered a round sent after the
        call (ReadProbeAck), the noted length is the index. Why it holds: an entry committed
        before the call was accepted by a quorum at some ballot b' of this epoch. If b' is this
        leader's ballot, the leader proposed it, below the noted length. If b' is lower, the
        leader's phase 1 met that quorum and found the entry, or an applied length beyond it
        (plan_takeover): it lies below the takeover's end. If b' is higher, a quorum promised
        b' before the call, and promises only grow: no quorum can answer a later round that
        it promised nothing above this ballot. An entry of a later epoch follows a membership
        change committed in this one, which the noted range would then hold: such a read is
        refused (_read_wait). Acceptors answer only probes of their own epoch. A follower asks
        its leader (ReadIndexRequest) and passes its answer on (ReadIndexReply).
        """
        self._now = now
        if self.stopped:
            self._out.reads.append((read_id, None))
        elif self._lead:
            self._read_wait(self._lead, self.id, read_id)
        elif self.leader is not None and self.leader != self.id:
            self._send(self.leader, ReadIndexRequest(read_id))
        else:
            self._out.reads.append((read_id, None))

    def receive(self, src: int, msg: Message, now: float) -> None:  # noqa: C901, PLR0912 - one case per kind
        self._now = now
        if self.stopped or src == self.id:
            return
        self._heard[src] = now
        if isinstance(msg, _BALLOT_MESSAGES) and not self._same_epoch(src, msg, now):
            return
        if isinstance(msg, Prepare | Accept | ReadProbe) and (
            src != msg.ballot.node or src not in self.membership.voters
        ):
            return  # only this epoch's voters campaign and lead (as this node knows them)
        if isinstance(msg, Prepare | Accept) and msg.voters and msg.voters != self._voter_list:
            # Its member list for this epoch is not this node's (a founder that lost its disk
            # and restarted with a stale configured list): its quorums are not this epoch's.
            return
        match msg:
            case Prepare():
                self._on_prepare(src, msg, now)
            case Promise():
                self._note_len(src, msg.length)
                self._on_promise(src, msg, now)
            case Nack():
                self._note_len(src, msg.length)
                self._seen_round = max(self._seen_round, msg.promised.round)
                # Any higher ballot ends this one: its accepts can no longer win everywhere,
                # and a leader that stayed on after a higher ballot chose could announce
                # another ballot's value as its own (see _learn).
                if self.role != FOLLOWER and msg.promised > self.ballot:
                    self._step_down(now)
            case Accept():
                self._on_accept(src, msg, now)
            case Accepted():
                self._on_accepted(src, msg, now)
            case Forward():
                self._on_forward(src, msg)
            case Refuse():
                if self._pending.pop(msg.request_id, None) is not None:
                    self._refuse(msg.request_id, msg.code, msg.reason)
            case CatchupRequest():
                config = self.config
                batch = self.log.read(msg.from_slot, config.catchup_batch, config.batch_bytes)
                slots = [(e.slot, Entry(e.request_id, e.value)) for e in batch]
                entries = tuple(entry for _, entry in self._batches(slots)[0])
                self._send(src, CatchupReply(msg.from_slot, entries, self.log.length))
            case ReadProbe():
                # Promised nothing above the ballot: nothing to persist, nothing to follow.
                if self.acceptor.voting and self.acceptor.promised <= msg.ballot:
                    self._send(src, ReadProbeAck(msg.ballot, msg.seq, self.membership.epoch))
            case ReadProbeAck():
                self._on_read_probe_ack(src, msg)
            case ReadIndexRequest():
                if self._lead:
                    self._read_wait(self._lead, src, msg.read_id)
            case ReadIndexReply():
                self._out.reads.append((msg.read_id, msg.index))
            case CatchupReply():
                self._note_len(src, msg.length)
                if msg.from_slot == MAX_SLOT:
                    # The answer to a probe (_probe) or to a message of an older epoch: no
                    # entries, no catch-up of this node's in progress; start one if behind.
                    self._catch_up(now, src)
                    return
                for offset, entry in enumerate(msg.entries):
                    self._learn(msg.from_slot + offset, entry, now)
                self._apply()
                self._catchup_at = None
                self._catch_up(now, src)

    def _same_epoch(self, src: int, msg: _BallotMessage, now: float) -> bool:
        """Ballot messages count only within one epoch (membership.py). A node behind catches
        up, which brings it into the sender's epoch; a sender behind is told where this log
        ends (as a probe is)."""
        epoch = self.membership.epoch
        if msg.epoch > epoch:
            self._note_len(src, max(msg.epoch, self._peer_len.get(src, 0)))
            self._catch_up(now, src)
        elif msg.epoch < epoch:
            self._send(src, CatchupReply(MAX_SLOT, (), self.log.length))
        return msg.epoch == epoch

    def on_timer(self, now: float) -> None:
        self._now = now
        if self.stopped:
            return
        if self._lead:
            self._lead_timer(self._lead, now)
        elif now >= self._election_at:
            if self._may_campaign():
                self._start_campaign(now)
            else:
                self._probe(now)
        if self._pending and now >= self._retry_at:
            self._retry_pending(now)
        if self._catchup_at is not None and now >= self._catchup_at:
            self._catchup_at = None
            self._catch_up(now, None)

    def _lead_timer(self, lead: _Leadership, now: float) -> None:
        if now >= lead.heartbeat_at:
            if not self._has_quorum(lead, now):
                self._step_down(now)
                return
            self._heartbeat(lead, now)
        if now >= lead.announce_at and self._announce_due(lead):
            # Here, not only in ready(): a driver still committing takes no Ready, and a due
            # deadline left in place would fire again at once. It leaves with the next Ready,
            # after that commit, as a heartbeat made here does.
            for peer in self.peers:
                self._send(peer, self._accept_msg(lead, ()))
            self._announced(lead)

    def next_deadline(self) -> float:
        if self.stopped:
            return math.inf
        lead = self._lead
        deadline = min(lead.heartbeat_at, lead.announce_at) if lead else self._election_at
        if self._pending:
            deadline = min(deadline, self._retry_at)
        if self._catchup_at is not None:
            deadline = min(deadline, self._catchup_at)
        return deadline

    def stop(self, now: float) -> None:
        """The assignment's stop: behave as failed until resume."""
        self._now = now
        for rid in self._pending:
            # Possibly forwarded and chosen already: the outcome is unknown, not a refusal.
            self._refuse(rid, "interrupted", "this node was stopped while the request was pending")
        self._pending.clear()
        self._step_down(now)
        self.leader = None
        self._catchup_at = None
        self.stopped = True

    def resume(self, now: float) -> None:
        self._now = now
        self.stopped = False
        self._backoff = 1.0
        self._election_at = now + self._election_timeout()

    def ready(self) -> Ready:
        lead = self._lead
        if lead and (lead.unsent or self._announce_due(lead)):
            # One accept per peer per Ready: the batch, with the chosen length piggybacked.
            batches = self._batches(
                [(s, lead.proposals[s].entry) for s in lead.unsent if s in lead.proposals]
            )
            for peer in self.peers:
                for batch in batches:
                    self._send(peer, self._accept_msg(lead, batch))
            lead.unsent.clear()
            self._announced(lead)
        if lead:
            lead.beacon = (tuple(self.peers), self._accept_msg(lead, ()))
        if lead and lead.read_seq > lead.read_sent:  # one round for the reads of this Ready
            lead.read_sent = lead.read_seq
            self._send_read_probes(lead)
        out, self._out = self._out, Ready()
        return out

    def _announce_due(self, lead: _Leadership) -> bool:
        """Whether the chosen length past what the peers were told goes out now in an empty
        Accept; if not, by `lead.announce_at` (next_deadline), unless an Accept with entries or
        a heartbeat carries it first.

        Why it may wait: the followers apply a slot only once an Accept tells them it is chosen.
        Announced at once, as this did, every decision cost each follower a second message,
        driver turn and commit, and the leader two more frames each way, per sequential request
        (paxmr bench replicate: a sixth to a fifth of the three PRMs' CPU). A client of this
        leader's is answered on the leader's own apply; its next request's Accept, usually a
        millisecond later, announces the decision for free. What waits is only the followers'
        learning, at most `announce_delay` (their local reads are that much staler; a
        follower's status counts behind from the lengths it was told).
        Why it is not delayed otherwise: a slot whose request this node does not wait for (a
        forward: the follower's client waits for the follower's apply; takeover values,
        no-ops), a read index sent to a follower (it waits to apply up to it) and a new ballot
        go at once (_announce_now, sent_chosen -1).
        Safety does not depend on it: this changes only when an empty Accept is sent, a message
        whose content is the same whenever it leaves, and the core takes any delay or loss of
        messages."""
        if lead.sent_chosen == self.log.length:
            lead.announce_at = math.inf  # nothing to announce: no deadline
            return False
        if lead.sent_chosen < 0 or not self.config.announce_delay:
            return True
        if lead.announce_at == math.inf:
            lead.announce_at = self._now + self.config.announce_delay
        return self._now >= lead.announce_at

    def _announce_now(self, lead: _Leadership) -> None:
        """Announce the chosen length with the next Ready (not at a time in the past: a
        simulator's clock would go back to it)."""
        if self.config.announce_delay:  # else every decision goes at once anyway
            lead.announce_at = min(lead.announce_at, self._now)

    def _announced(self, lead: _Leadership) -> None:
        """Every peer was sent the chosen length (an Accept to each of them)."""
        lead.sent_chosen = self.log.length
        lead.announce_at = math.inf

    def beacon(self) -> list[tuple[int, Accept]]:
        """The heartbeat of a leader whose driver is still committing the last Ready: an empty
        Accept to each peer, as that Ready could have carried it. Nothing changes here.

        Why: a driver takes no Ready until the last one's commit is done, so a commit that
        outlasts the election timeout (megabytes of values on a busy disk took 1.3 s) held back
        every heartbeat, and the followers elected another leader. A driver calls this while it
        waits on such a commit, once per heartbeat interval.

        Why it is safe: the message is a copy of one the last Ready was allowed to send before
        its commit (an Accept is not in AFTER_COMMIT, ready.py): the ballot, the chosen length
        and the epoch as they were when that Ready was taken, no entries. What this node decided
        since (during the commit, on a peer's reply, counting its own accept that may not be on
        disk yet) is not in it: it leaves with the next Ready, after the commit, as always. A
        copy of an allowed message is a duplicate, which the core takes whatever the network
        does (the simulator replays old messages at random times). A leader that stepped down
        since sends nothing."""
        lead = self._lead
        if self.stopped or lead is None or lead.beacon is None:
            return []
        peers, accept = lead.beacon
        return [(peer, accept) for peer in peers]

    def status(self) -> NodeStatus:
        recent = self._now - self.config.election_timeout_max
        return NodeStatus(
            node=self.id,
            role=self.role,
            leader=self.leader,
            promised=self.acceptor.promised,
            stopped=self.stopped,
            voting=self.acceptor.voting,
            length=self.log.length,
            count=self.log.count,
            in_flight=self._in_flight(self._lead) if self._lead else 0,
            pending=len(self._pending),
            peers_heard=tuple(p for p in self.peers if self._heard.get(p, -math.inf) >= recent),
            membership=self.membership,
            peer_lengths=tuple(sorted(self._peer_len.items())),
        )

    # -- acceptor ---------------------------------------------------------------------------

    def _on_prepare(self, src: int, msg: Prepare, now: float) -> None:
        self._seen_round = max(self._seen_round, msg.ballot.round)
        if not self.is_voter:
            return  # a learner or a removed member has no say in this epoch
        acceptor = self.acceptor
        if acceptor.may_promise(msg.ballot):
            if self.role != FOLLOWER:
                self._step_down(now)
            acceptor.raise_promise(msg.ballot, self._out.persist)
            self.leader = None
            self._election_at = now + self._election_timeout()  # give the candidate time
            self._send_promise(src, msg)
        elif acceptor.voting and msg.ballot == acceptor.promised and msg.ballot.node == src:
            # The next page of this promise (or a repeat) for the candidate. Since the promise
            # nothing was accepted above the ballot (the promise would have risen), and at it
            # only once the candidate leads: then it no longer counts promises.
            self._send_promise(src, msg)
        elif not acceptor.voting and msg.ballot > self.ballot:
            # Cannot promise; gives up its own ballots below this one (acceptor.py, step 1).
            if self.role != FOLLOWER:
                self._step_down(now)
            epoch = self.membership.epoch
            self._send(
                src, Promise(msg.ballot, msg.from_slot, (), self.log.length, False, epoch=epoch)
            )
        else:
            self._nack(src, msg.ballot, max(acceptor.promised, self.ballot))

    def _nack(self, dst: int, ballot: Ballot, promised: Ballot) -> None:
        self._send(dst, Nack(ballot, promised, self.log.length, self.membership.epoch))

    def _send_promise(self, dst: int, msg: Prepare) -> None:
        rows, more = self.acceptor.page(msg.from_slot, self.config.batch_bytes)
        epoch = self.membership.epoch
        self._send(
            dst, Promise(msg.ballot, msg.from_slot, rows, self.log.length, more=more, epoch=epoch)
        )

    def _on_accept(self, src: int, msg: Accept, now: float) -> None:
        self._seen_round = max(self._seen_round, msg.ballot.round)
        self._note_len(src, msg.length)
        acceptor = self.acceptor
        if not self.is_voter:
            # A learner follows the log: it fetches what the leader has applied, and tells how
            # far it got. Its answer is an Accepted only if its storage could vote: the leader
            # counts only those as able to vote once promoted (_change_leaves_no_quorum).
            self._follow(msg.ballot.node)
            length = self.log.length
            if acceptor.voting:
                self._send(src, Accepted(msg.ballot, (), length, self.membership.epoch))
            else:
                self._send(src, CatchupReply(MAX_SLOT, (), length))
            self._catch_up(now, src)
            return
        if acceptor.voting and not acceptor.may_accept(msg.ballot):
            self._nack(src, msg.ballot, acceptor.promised)
            return
        if self._lead and msg.ballot < self._lead.ballot:
            # A lower ballot's accept reaching a leader: a voter Nacks above when it has
            # promised its own ballot; a leader that could not vote when it won may not have.
            self._nack(src, msg.ballot, self._lead.ballot)
            return
        fenced = acceptor.voting or acceptor.recover_until is not None
        if self.role != FOLLOWER and msg.ballot > self.ballot and fenced:
            self._step_down(now)
        self._follow(msg.ballot.node)
        if fenced:
            # An unfenced replica keeps campaigning: winning phase 1 is how it fences.
            self._election_at = now + self._election_timeout()
            self._backoff = 1.0
        if acceptor.voting:
            self._accept(src, msg)
        self._catch_up(now, src)

    def _accept(self, src: int, msg: Accept) -> None:
        acceptor = self.acceptor
        persist = self._out.persist
        acceptor.raise_promise(msg.ballot, persist)
        acked = []
        for slot, entry in msg.entries:
            if slot >= self.log.length:
                acceptor.accept(msg.ballot, slot, entry, persist)
                acked.append(slot)
        # Slots below the leader's applied length are chosen. A value this node accepted in
        # the leader's own ballot is the chosen one: the leader proposed it (one value per
        # slot per ballot), and a leader that learns another value was chosen in a slot it
        # proposed for stops leading before it announces that slot (_learn).
        for slot in range(self.log.length, msg.length):
            if not self.log.knows(slot):
                entry_ = acceptor.accepted_at(slot, msg.ballot)
                if entry_ is None:
                    break
                self.log.learn(slot, entry_)
                if entry_.is_membership:
                    break  # the end of this ballot's epoch (membership.py)
        self._apply()
        epoch = self.membership.epoch
        self._send(src, Accepted(msg.ballot, tuple(acked), self.log.length, epoch))

    # -- proposer ---------------------------------------------------------------------------

    def _may_campaign(self) -> bool:
        """A node that must fence needs every peer, so it campaigns only when all of them
        answered its last probe: a campaign that cannot finish would only depose the leader."""
        if not self.is_voter:
            return False
        if self.acceptor.voting:
            return True
        return all(self._heard.get(p, -math.inf) >= self._probed_at for p in self.voting_peers)

    def _probe(self, now: float) -> None:
        """Ask every peer for its applied length (an empty catch-up): their answers tell that
        they are up, and where the log ends."""
        self._probed_at = now
        self._election_at = now + self._election_timeout()
        for peer in self.peers:
            self._send(peer, CatchupRequest(MAX_SLOT))

    def _start_campaign(self, now: float) -> None:
        self._step_down(now)
        acceptor = self.acceptor
        round_ = self._next_round()
        self._used_round = self._seen_round = round_
        self._out.persist.used_round = round_
        ballot = Ballot(round_, self.id)
        # A node that fenced but has not caught up fences again: with two voters, what it
        # found in flight is chosen only with its own accept, so only as leader (acceptor.py).
        fence = not acceptor.voting
        campaign = self._campaign = _Campaign(ballot, self.log.length, fence)
        self._election_at = now + self._election_timeout()
        self._backoff = min(self._backoff * 2, self.config.max_backoff)
        for peer in self.voting_peers:
            self._send(
                peer, Prepare(ballot, campaign.from_slot, self.membership.epoch, self._voter_list)
            )
        # A replica that lost its storage does not count itself (see acceptor.py).
        if acceptor.may_promise(ballot):
            acceptor.raise_promise(ballot, self._out.persist)
            rows = tuple(acceptor.rows(campaign.from_slot))  # its own: no frame to fit
            epoch = self.membership.epoch
            campaign.answered[self.id] = Promise(
                ballot, campaign.from_slot, rows, self.log.length, epoch=epoch
            )
            self._check_elected(campaign, now)

    def _next_round(self) -> int:
        round_ = max(self._used_round, self._seen_round, self.acceptor.promised.round) + 1
        if not self.acceptor.voting:
            round_ += self._rng.randrange(FRESH_ROUNDS)  # see acceptor.py, step 0
        return round_

    def _on_promise(self, src: int, msg: Promise, now: float) -> None:
        campaign = self._campaign
        if campaign is None or msg.ballot != campaign.ballot or src in campaign.answered:
            return
        rows = campaign.rows.setdefault(src, [])
        expected = rows[-1].slot + 1 if rows else campaign.from_slot
        if msg.from_slot != expected:
            return  # a repeated or reordered page
        rows.extend(msg.accepted)
        if msg.more and msg.accepted:
            more = Prepare(campaign.ballot, msg.accepted[-1].slot + 1, msg.epoch, self._voter_list)
            self._send(src, more)
            return
        del campaign.rows[src]
        joined = Promise(msg.ballot, campaign.from_slot, tuple(rows), msg.length, msg.voter)
        campaign.answered[src] = joined
        self._check_elected(campaign, now)

    def _check_elected(self, campaign: _Campaign, now: float) -> None:
        votes = campaign.votes(self.membership.voters)
        if not campaign.fence:
            if votes < self.quorum:
                return
        elif votes < self.membership.fence_quorum or any(
            p not in campaign.answered for p in self.voting_peers
        ):
            return
        self._become_leader(campaign, now)

    def _become_leader(self, campaign: _Campaign, now: float) -> None:
        plan = plan_takeover(campaign.answered.values(), self.log.length)
        if campaign.fence and not self.acceptor.voting:  # it may have caught up meanwhile
            self.acceptor.fence(campaign.ballot, plan.end, self._out.persist)
            self.acceptor.caught_up(self.log.length, self._out.persist)
        self._campaign = None
        lead = self._lead = _Leadership(
            campaign.ballot, now, plan.end, now + self.config.heartbeat_interval
        )
        self.leader = self.id
        self._backoff = 1.0
        for slot, entry in plan.values.items():
            self._propose(lead, slot, self.log.learned(slot) or entry)
        self._catch_up(now, None)
        for pending in list(self._pending.values()):
            self._route(pending.request)

    def _propose(self, lead: _Leadership, slot: int, entry: Entry) -> None:
        proposal = Proposal(entry, self._now)
        lead.proposals[slot] = proposal
        if not entry.is_noop:
            lead.proposed_ids.add(entry.request_id)
        if self.acceptor.may_accept_own(lead.ballot):
            self.acceptor.accept(lead.ballot, slot, entry, self._out.persist)
            proposal.acks.add(self.id)
        lead.unsent.append(slot)
        if self._decide(lead):
            self._apply()

    def _propose_request(self, lead: _Leadership, request: Request) -> Refused | None:
        """Propose in the next free slot, or say why not: busy (the in-flight window is full)
        or no_quorum (a membership change that would leave no voting quorum)."""
        rid = request.request_id
        if self.log.first(rid) is not None or rid in lead.proposed_ids:
            return None
        if self._in_flight(lead) >= self.config.max_in_flight:
            reason = f"the leader has {self.config.max_in_flight} slots in flight"
            return Refused("busy", reason)
        entry = Entry(rid, request.value)
        if entry.is_membership and (why := self._change_leaves_no_quorum(lead, entry)):
            return Refused("no_quorum", why)
        slot = max(lead.next_slot, self.log.length)
        lead.next_slot = slot + 1
        self._propose(lead, slot, entry)
        return None

    def _change_leaves_no_quorum(self, lead: _Leadership, entry: Entry) -> str | None:
        """Why this leader does not propose a membership change now: too few of the voters it
        would leave can vote. Those that answered its accepts lately with an Accepted can (and
        itself, if its storage votes); a learner whose storage cannot vote yet (it joined
        without state) answers otherwise, and votes only once it has fenced as a voter, which
        takes promises from the others (Membership.fence_quorum). Proposed anyway, such a change
        would stop the cluster until enough voters come back."""
        new = self.membership.apply(self.log.length, entry)
        if new is None:
            return None  # stale or malformed: it changes nothing where it lands
        recent = self._now - self.config.election_timeout_max
        able = [
            v
            for v in new.voters
            if (self.acceptor.voting if v == self.id else lead.acked.get(v, -math.inf) >= recent)
        ]
        if len(able) >= new.quorum:
            return None
        return (
            f"of the voters it would leave, {len(able)} can vote now ({sorted(able)}), fewer than"
            f" the {new.quorum} a quorum needs (a node that joins votes only after it fenced)"
        )

    def _on_accepted(self, src: int, msg: Accepted, now: float) -> None:
        self._note_len(src, msg.length)
        lead = self._lead
        if lead and msg.ballot == lead.ballot:
            lead.acked[src] = now
            for slot in msg.slots:
                proposal = lead.proposals.get(slot)
                if proposal is not None:
                    proposal.acks.add(src)
            if self._decide(lead):
                self._apply()
        self._catch_up(now, src)

    def _decide(self, lead: _Leadership) -> bool:
        """Learn this leader's chosen proposals, in slot order from the applied length, up to
        and including a membership change: the slots after it belong to the next epoch, whose
        voters may differ (membership.py). Whether anything was learned."""
        voters = self.membership.voters
        slot = self.log.length
        learned = False
        while True:
            entry = self.log.learned(slot)  # from a peer's applied log
            if entry is None:
                proposal = lead.proposals.get(slot)
                if proposal is None or len(proposal.acks & voters) < self.quorum:
                    return learned
                entry = proposal.entry
                self.log.learn(slot, entry)
                learned = True
            if entry.is_membership:
                return learned
            slot += 1

    def _on_forward(self, src: int, msg: Forward) -> None:
        if not self._lead:
            return  # the origin retries until its deadline
        if not msg.request_id or len(msg.request_id) > MAX_REQUEST_ID + len(MEMBERSHIP_PREFIX):
            return  # no honest peer forwards one: the control API bounds request ids
        if len(msg.value) > self.config.max_value_bytes:
            reason = f"value exceeds {self.config.max_value_bytes} bytes"
            self._send(src, Refuse(msg.request_id, "too_large", reason))
        elif refused := self._propose_request(self._lead, Request(msg.request_id, msg.value)):
            self._send(src, Refuse(msg.request_id, refused.code, refused.reason))

    def _heartbeat(self, lead: _Leadership, now: float) -> None:
        """Send each peer its unacknowledged slots, as far as its re-send allowance goes; an
        empty Accept is the heartbeat when there are none.

        The allowance: re-sends to a peer average at most RESEND_BYTES per heartbeat. A
        heartbeat re-sends slots in order while they fit RESEND_BYTES (at least one, however
        large), and the next re-send to that peer waits until the heartbeats since have paid for
        the bytes over it. First copies (lead.unsent) are not re-sends and always go, and a slot
        is first re-sent only once as many heartbeats have passed since its proposal as the
        allowance takes to pay for its size. When a heartbeat carries more than RESEND_BYTES,
        an empty Accept goes before it, so that the liveness signal (ballot, chosen length)
        does not wait behind the re-sent values.

        Why: re-sending every unacknowledged slot on every heartbeat, as this did, offered the
        same megabytes to every peer 20 times a second while large values were in flight: they
        filled its bounded outbox (the transport then drops new frames, heartbeats included),
        and each copy that got through was written to the follower's disk again. Peer links are
        ordered streams: a copy is needed only when a frame was lost (a dropped connection, a
        full outbox), and it still goes, at the allowance's pace. Small values (a heartbeat's
        worth under RESEND_BYTES) still go again on every heartbeat, so loss of them is repaired
        as fast as before. Safety does not depend on re-sending.

        Why a slot's first re-send waits for its size: a follower acknowledges a value once it
        has read it and written it to disk. A 6 MB value took a loaded follower 0.2-0.9 s
        before its Accepted, so the next heartbeat (0.1 s) sent the whole value again, which it
        wrote to disk a second time (0.25-1.1 s more) before answering anything else: the
        leader heard nothing from it for over the election timeout and stepped down, and each
        new leader's copies of the value did the same (tests/cluster/test_large.py's 6 MB
        catch-up, at load 11-20)."""
        unsent = set(lead.unsent)
        interval = self.config.heartbeat_interval
        for peer in self.peers:
            unacked = [(s, p) for s, p in lead.proposals.items() if peer not in p.acks]
            owed = max(0, lead.resent.get(peer, 0) - RESEND_BYTES)
            carried, resent, full = [], 0, owed > 0
            for slot, proposal in unacked[: self.config.catchup_batch]:
                entry = proposal.entry
                if slot not in unsent:
                    cost = wire_cost(entry)
                    if now < proposal.since + interval * cost / RESEND_BYTES:
                        continue  # its first copy may still be on its way or being written
                    full = full or (resent > 0 and resent + cost > RESEND_BYTES)
                    if full:
                        continue
                    resent += cost
                carried.append((slot, entry))
            lead.resent[peer] = owed + resent
            if sum(wire_cost(e) for _, e in carried) > RESEND_BYTES:
                self._send(peer, self._accept_msg(lead, ()))
            for batch in self._batches(carried):
                self._send(peer, self._accept_msg(lead, batch))
        lead.unsent.clear()
        self._announced(lead)
        lead.heartbeat_at = now + self.config.heartbeat_interval
        if lead.reads:  # a probe or its answer may have been lost: the same round again
            self._send_read_probes(lead)

    def _send_read_probes(self, lead: _Leadership) -> None:
        for peer in self.voting_peers:
            self._send(peer, ReadProbe(lead.ballot, lead.read_sent, self.membership.epoch))

    def _read_wait(self, lead: _Leadership, src: int, read_id: int) -> None:
        """Note a read's index and wait for the next ReadProbe round (read_index)."""
        index = max(lead.next_slot, self.log.length)
        if self._ends_epoch(lead, index) or len(lead.reads) >= MAX_READS:
            if src == self.id:
                self._out.reads.append((read_id, None))
            return  # a follower asks again
        lead.read_seq = lead.read_sent + 1
        lead.reads.append(_Read(src, read_id, lead.read_seq, index))
        self._confirm_reads(lead)

    def _ends_epoch(self, lead: _Leadership, end: int) -> bool:
        """Whether a membership change lies between the applied length and `end`: it ends
        this epoch, and entries of the next one, which this leader cannot see, may be
        committed already."""
        for slot in range(self.log.length, end):
            entry = self.log.learned(slot)
            if entry is None and (proposal := lead.proposals.get(slot)) is not None:
                entry = proposal.entry
            if entry is not None and entry.is_membership:
                return True
        return False

    def _on_read_probe_ack(self, src: int, msg: ReadProbeAck) -> None:
        lead = self._lead
        if lead is None or msg.ballot != lead.ballot or src not in self.membership.voters:
            return
        lead.read_acks[src] = max(lead.read_acks.get(src, 0), msg.seq)
        self._confirm_reads(lead)

    def _confirm_reads(self, lead: _Leadership) -> None:
        """Answer the reads whose round a quorum answered (this node counts if it votes)."""
        own = 1 if self.acceptor.voting else 0
        waiting = []
        for read in lead.reads:
            acks = sum(1 for p in self.voting_peers if lead.read_acks.get(p, 0) >= read.seq)
            if own + acks < self.quorum:
                waiting.append(read)
            elif read.src == self.id:
                self._out.reads.append((read.read_id, read.index))
            else:
                self._send(read.src, ReadIndexReply(read.read_id, read.index))
                self._announce_now(lead)  # it waits to apply up to the index
        lead.reads = waiting

    def _accept_msg(self, lead: _Leadership, batch: tuple[tuple[int, Entry], ...]) -> Accept:
        return Accept(lead.ballot, batch, self.log.length, self.membership.epoch, self._voter_list)

    def _has_quorum(self, lead: _Leadership, now: float) -> bool:
        window = self.config.election_timeout_max
        if now - lead.since < window:
            return True
        alive = sum(1 for p in self.voting_peers if lead.acked.get(p, -math.inf) >= now - window)
        return alive + (1 if self.acceptor.may_accept_own(lead.ballot) else 0) >= self.quorum

    def _step_down(self, now: float) -> None:
        if self._lead:
            self.leader = None
            # Local reads fail now; a follower's time out and ask again.
            self._out.reads.extend((r.read_id, None) for r in self._lead.reads if r.src == self.id)
        self._campaign = self._lead = None
        self._election_at = now + self._election_timeout()

    def _batches(self, entries: list[tuple[int, Entry]]) -> list[tuple[tuple[int, Entry], ...]]:
        """Split into messages of at most batch_bytes (or one entry); no entries gives one empty
        batch."""
        batches: list[tuple[tuple[int, Entry], ...]] = []
        batch: list[tuple[int, Entry]] = []
        size = 0
        for item in entries:
            cost = wire_cost(item[1])
            if batch and (size + cost > self.config.batch_bytes or len(batch) == MAX_BATCH):
                batches.append(tuple(batch))
                batch, size = [], 0
            batch.append(item)
            size += cost
        batches.append(tuple(batch))
        return batches

    def _in_flight(self, lead: _Leadership) -> int:
        return max(0, lead.next_slot - self.log.length)

    def _election_timeout(self) -> float:
        cfg = self.config
        return self._rng.uniform(cfg.election_timeout_min, cfg.election_timeout_max) * self._backoff

    # -- client requests --------------------------------------------------------------------

    def _follow(self, leader: int) -> None:
        if leader != self.leader:
            self.leader = leader
            for pending in list(self._pending.values()):  # a new leader: forward what waits
                self._route(pending.request)

    def _route(self, request: Request) -> None:
        if self._lead:
            refused = self._propose_request(self._lead, request)
            rid = request.request_id
            # Busy: it waits and is routed again; anything else is final.
            if refused and refused.code != "busy" and self._pending.pop(rid, None):
                self._refuse(rid, refused.code, refused.reason)
        elif self.leader is not None and self.leader != self.id:
            self._send(self.leader, Forward(request.request_id, request.value))

    def _retry_pending(self, now: float) -> None:
        self._retry_at = math.inf
        for rid, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[rid]
                if self.leader is None:
                    self._refuse(rid, "no_quorum", "no leader could be reached before the deadline")
                else:
                    self._refuse(rid, "timeout", "not applied before the deadline")
                continue
            if now >= pending.retry_at:
                self._route(pending.request)
                pending.retry_at = now + self._retry_wait(pending.request)
            self._retry_at = min(self._retry_at, pending.retry_at, pending.deadline)

    def _retry_wait(self, request: Request) -> float:
        """How long a pending request waits before it is forwarded again: election_timeout_min,
        or longer for a large value: each goes again no faster than RESEND_BYTES per heartbeat,
        as the leader's re-sends (_heartbeat). A forward is lost only with its connection, and
        re-forwarding megabytes every few heartbeats clogs the link to the leader as its
        re-sends did the other way; a new leader gets the request at once (_follow)."""
        config = self.config
        paced = config.heartbeat_interval * len(request.value) / RESEND_BYTES
        return max(config.election_timeout_min, paced)

    def _refuse(self, rid: str, code: str, reason: str) -> None:
        self._out.replies.append(Reply(rid, Refused(code, reason)))

    # -- learner ----------------------------------------------------------------------------

    def _learn(self, slot: int, entry: Entry, now: float) -> None:
        """A chosen value from a peer's log. If this node leads and proposed another value in
        that slot, a higher ballot chose it: this ballot is over. Leading on, it would announce
        the slot as chosen, and a follower holding this ballot's proposal would apply that
        instead (see _on_accept)."""
        lead = self._lead
        proposal = lead.proposals.get(slot) if lead else None
        if proposal is not None and proposal.entry != entry:
            self._step_down(now)
        self.log.learn(slot, entry)

    def _apply(self) -> None:
        while self._apply_learned() or (self._lead and self._decide(self._lead)):
            pass

    def _apply_learned(self) -> bool:
        """Apply learned slots up to and including a membership change; whether any."""
        applied = self.log.apply_learned(stop=lambda e: e.is_membership)
        if not applied:
            return False
        self._out.applied.extend(applied)
        self._out.persist.log.extend(applied)
        length = self.log.length
        self.acceptor.forget_below(length)
        self.acceptor.caught_up(length, self._out.persist)
        lead = self._lead
        if lead and lead.proposals and min(lead.proposals) < length:
            lead.proposals = {s: p for s, p in lead.proposals.items() if s >= length}
        for entry in applied:
            if lead:
                lead.proposed_ids.discard(entry.request_id)
            if self._pending.pop(entry.request_id, None) is not None:
                first = self.log.first(entry.request_id)  # none for membership changes
                outcome = Committed(*first) if first else Committed(None, entry.slot)
                self._out.replies.append(Reply(entry.request_id, outcome))
            elif lead:
                self._announce_now(lead)  # not this node's request: see _announce_due
        last = applied[-1]
        changed = self.membership.apply(last.slot, Entry(last.request_id, last.value))
        if changed is not None:
            self._enter_epoch(changed)
        return True

    def _enter_epoch(self, membership: Membership) -> None:
        """The stop sign in slot membership.epoch - 1 is applied (membership.py)."""
        lead = self._lead
        if lead:
            # Tell the old epoch's members that the stop sign is chosen: they apply it from
            # their accepted row and enter the new epoch before its first Prepare arrives.
            for peer in self.peers:
                self._send(peer, self._accept_msg(lead, ()))
        self.acceptor.new_epoch(membership.epoch, self._out.persist)
        self._set_membership(membership)
        self._step_down(self._now)
        self.leader = None
        if lead and self.is_voter:
            self._election_at = self._now  # lead on in the new epoch without waiting

    def _note_len(self, src: int, length: int) -> None:
        # The latest report wins, even if smaller: a peer whose storage was lost starts over.
        self._peer_len[src] = length

    def _catch_up(self, now: float, hint: int | None) -> None:
        """Fetch chosen entries, one batch at a time, from a peer known to be ahead."""
        length = self.log.length
        if self._catchup_at is not None or max(self._peer_len.values(), default=0) <= length:
            return
        if hint is None or self._peer_len.get(hint, 0) <= length:
            hint = max(self._peer_len, key=lambda p: self._peer_len[p])
        self._send(hint, CatchupRequest(length))
        # Ask again if no reply came by then (the request or the reply was lost): two heartbeats,
        # or longer when a reply may be large (up to batch_bytes), at the pace of the leader's
        # re-sends (_heartbeat). Asking sooner only queues more megabytes behind the reply that
        # is still on its way; a reply that arrives asks for the next batch at once.
        config = self.config
        paced = config.heartbeat_interval * config.batch_bytes / RESEND_BYTES
        self._catchup_at = now + max(2 * config.heartbeat_interval, paced)

    def _send(self, dst: int, msg: Message) -> None:
        self._out.messages.append((dst, msg))


_BallotMessage = Prepare | Promise | Nack | Accept | Accepted | ReadProbe | ReadProbeAck
_BALLOT_MESSAGES = (Prepare, Promise, Nack, Accept, Accepted, ReadProbe, ReadProbeAck)
