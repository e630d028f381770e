"""Peer messages and their wire form.

`to_wire` gives plain str/int/bytes/bool/list/dict so msgpack can carry it; `from_wire` treats its
input as untrusted and raises `BadMessage` for anything that is not exactly a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paxmr.paxos.ballot import Ballot
from paxmr.paxos.log import Entry

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_SLOT = 2**62
MAX_BATCH = 100_000
# Bytes an entry adds to a message beyond its request id and value: msgpack's headers for its
# list, slot, ballot, id and value, rounded up. Budgets count this too (wire_cost), so a batch
# of many small entries fits its frame as well as one of a few large ones.
ENTRY_FRAMING = 48


def wire_cost(entry: Entry) -> int:
    """An upper bound on the bytes `entry` adds to a message."""
    return len(entry.value) + len(entry.request_id.encode()) + ENTRY_FRAMING


class BadMessage(ValueError):
    """A peer sent something that is not a well-formed message."""


@dataclass(frozen=True, slots=True)
class AcceptedValue:
    slot: int
    ballot: Ballot
    entry: Entry


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a for every slot from `from_slot` on."""

    ballot: Ballot
    from_slot: int
    epoch: int = 0  # every ballot message names its sender's epoch (membership.py)
    # The proposer's voters (sorted; empty: not said): a node whose member list for the epoch
    # differs computes other quorums, so its Prepares and Accepts are refused (Node.receive).
    voters: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b, one page of it: the acceptor's accepted values from `from_slot` on (as many as
    fit a batch; `more` if the rest follows on request, see Node._on_promise) and its applied
    length. `voter` is False for a node that lost its storage: it cannot promise, only give up
    its own ballots below `ballot` (the lost-storage fence counts that, see acceptor.py)."""

    ballot: Ballot
    from_slot: int
    accepted: tuple[AcceptedValue, ...]
    length: int
    voter: bool = True
    more: bool = False
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Nack:
    """`ballot` was refused because the acceptor promised `promised`."""

    ballot: Ballot
    promised: Ballot
    length: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a for a batch of slots; empty `entries` is a heartbeat. `length` is the leader's
    applied length: the chosen notification piggybacks on every accept."""

    ballot: Ballot
    entries: tuple[tuple[int, Entry], ...]
    length: int
    epoch: int = 0
    voters: tuple[int, ...] = ()  # as in Prepare


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b for the listed slots (possibly none: a heartbeat answer)."""

    ballot: Ballot
    slots: tuple[int, ...]
    length: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Forward:
    """A follower passes a client's replicate to the leader it knows."""

    request_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """The leader refuses a forwarded replicate (flow control)."""

    request_id: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class CatchupRequest:
    from_slot: int


@dataclass(frozen=True, slots=True)
class CatchupReply:
    """Chosen entries from `from_slot` on, in slot order, and the sender's applied length."""

    from_slot: int
    entries: tuple[Entry, ...]
    length: int


@dataclass(frozen=True, slots=True)
class ReadProbe:
    """A leader asks the voters whether anyone has outbid `ballot`: one round `seq` of the
    confirmation behind a read index (Node.read_index)."""

    ballot: Ballot
    seq: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReadProbeAck:
    """A voter of `epoch` had promised no ballot above `ballot` when it answered round `seq`."""

    ballot: Ballot
    seq: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A replica asks its leader for a read index (Node.read_index); `read_id` is its own."""

    read_id: int


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    """The leader confirmed it led after the request arrived: a read that waits until its
    applied length reaches `index` sees every entry committed before the request."""

    read_id: int
    index: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Asks a peer for its own view (`paxmr status --cluster`). For the PRM, not the core:
    the PRM answers it and never passes it on."""

    query_id: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    """A member's view of itself, as its `paxmr status` reports it (the PRM's
    `Prm.view`); `leader` 0 means none known."""

    query_id: int
    role: str
    leader: int
    ballot: Ballot
    stopped: bool
    voting: bool
    length: int  # applied slots, no-ops included
    count: int  # applied requests
    digest: str
    problems: tuple[str, ...]
    version: str
    log_bytes: int
    uptime_ms: int


Message = (
    Prepare
    | Promise
    | Nack
    | Accept
    | Accepted
    | Forward
    | Refuse
    | CatchupRequest
    | CatchupReply
    | ReadProbe
    | ReadProbeAck
    | ReadIndexRequest
    | ReadIndexReply
    | StatusRequest
    | StatusReply
)


def _ballot(b: Ballot) -> list[int]:
    return [b.round, b.node]


def _entry(e: Entry) -> list[Any]:
    return [e.request_id, e.value]


def to_wire(msg: Message) -> dict[str, Any]:  # noqa: C901, PLR0912 - one case per kind
    match msg:
        case Prepare():
            return {
                "k": "prepare",
                "b": _ballot(msg.ballot),
                "from": msg.from_slot,
                "ep": msg.epoch,
                "vs": list(msg.voters),
            }
        case Promise():
            acc = [[a.slot, _ballot(a.ballot), _entry(a.entry)] for a in msg.accepted]
            return {
                "k": "promise",
                "b": _ballot(msg.ballot),
                "from": msg.from_slot,
                "acc": acc,
                "len": msg.length,
                "voter": msg.voter,
                "more": msg.more,
                "ep": msg.epoch,
            }
        case Nack():
            return {
                "k": "nack",
                "b": _ballot(msg.ballot),
                "p": _ballot(msg.promised),
                "len": msg.length,
                "ep": msg.epoch,
            }
        case Accept():
            entries = [[s, _entry(e)] for s, e in msg.entries]
            return {
                "k": "accept",
                "b": _ballot(msg.ballot),
                "e": entries,
                "c": msg.length,
                "ep": msg.epoch,
                "vs": list(msg.voters),
            }
        case Accepted():
            return {
                "k": "accepted",
                "b": _ballot(msg.ballot),
                "s": list(msg.slots),
                "len": msg.length,
                "ep": msg.epoch,
            }
        case Forward():
            return {"k": "forward", "id": msg.request_id, "v": msg.value}
        case Refuse():
            return {"k": "refuse", "id": msg.request_id, "code": msg.code, "why": msg.reason}
        case CatchupRequest():
            return {"k": "catchup", "from": msg.from_slot}
        case CatchupReply():
            entries_ = [_entry(e) for e in msg.entries]
            return {"k": "entries", "from": msg.from_slot, "e": entries_, "len": msg.length}
        case ReadProbe():
            return {"k": "rprobe", "b": _ballot(msg.ballot), "seq": msg.seq, "ep": msg.epoch}
        case ReadProbeAck():
            return {"k": "rack", "b": _ballot(msg.ballot), "seq": msg.seq, "ep": msg.epoch}
        case ReadIndexRequest():
            return {"k": "rindex", "id": msg.read_id}
        case ReadIndexReply():
            return {"k": "rindexed", "id": msg.read_id, "i": msg.index}
        case StatusRequest():
            return {"k": "status", "id": msg.query_id}
        case StatusReply():
            return {
                "k": "statusr",
                "id": msg.query_id,
                "role": msg.role,
                "leader": msg.leader,
                "b": _ballot(msg.ballot),
                "stop": msg.stopped,
                "vote": msg.voting,
                "slots": msg.length,
                "n": msg.count,
                "d": msg.digest,
                "p": list(msg.problems),
                "v": msg.version,
                "bytes": msg.log_bytes,
                "up": msg.uptime_ms,
            }


def _field(obj: dict[Any, Any], key: str) -> Any:
    if key not in obj:
        raise BadMessage(f"missing field {key!r}")
    return obj[key]


def _as_int(value: Any, what: str) -> int:
    # bool is an int subclass; a peer sending true for a slot is malformed.
    if type(value) is not int or not 0 <= value <= MAX_SLOT:
        raise BadMessage(f"{what} must be an integer in [0, 2**62]")
    return value


def _as_str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise BadMessage(f"{what} must be a string")
    return value


def _as_bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise BadMessage(f"{what} must be bytes")
    return value


def _as_bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise BadMessage(f"{what} must be a boolean")
    return value


def _as_list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if type(value) is not list or len(value) > MAX_BATCH:
        raise BadMessage(f"{what} must be a list of at most {MAX_BATCH} items")
    if length is not None and len(value) != length:
        raise BadMessage(f"{what} must have {length} items")
    return value


def _as_ballot(value: Any) -> Ballot:
    items = _as_list(value, "ballot", 2)
    return Ballot(_as_int(items[0], "ballot round"), _as_int(items[1], "ballot node"))


def _as_entry(value: Any) -> Entry:
    items = _as_list(value, "entry", 2)
    return Entry(_as_str(items[0], "request id"), _as_bytes(items[1], "value"))


def _slot_entry(value: Any) -> tuple[int, Entry]:
    items = _as_list(value, "slot entry", 2)
    return _as_int(items[0], "slot"), _as_entry(items[1])


def _accepted_value(value: Any) -> AcceptedValue:
    items = _as_list(value, "accepted value", 3)
    return AcceptedValue(_as_int(items[0], "slot"), _as_ballot(items[1]), _as_entry(items[2]))


def _epoch(f: dict[Any, Any]) -> int:
    return _as_int(_field(f, "ep"), "epoch")


def _voters(f: dict[Any, Any]) -> tuple[int, ...]:
    """The optional voter list of a Prepare or Accept (absent from older senders)."""
    if "vs" not in f:
        return ()
    return tuple(_as_int(v, "voter") for v in _as_list(f["vs"], "voters"))


def _prepare(f: dict[Any, Any]) -> Message:
    return Prepare(
        _as_ballot(_field(f, "b")), _as_int(_field(f, "from"), "from"), _epoch(f), _voters(f)
    )


def _promise(f: dict[Any, Any]) -> Message:
    acc = _as_list(_field(f, "acc"), "accepted")
    return Promise(
        _as_ballot(_field(f, "b")),
        _as_int(_field(f, "from"), "from"),
        tuple(_accepted_value(a) for a in acc),
        _as_int(_field(f, "len"), "len"),
        _as_bool(_field(f, "voter"), "voter"),
        _as_bool(_field(f, "more"), "more"),
        _epoch(f),
    )


def _nack(f: dict[Any, Any]) -> Message:
    return Nack(
        _as_ballot(_field(f, "b")),
        _as_ballot(_field(f, "p")),
        _as_int(_field(f, "len"), "len"),
        _epoch(f),
    )


def _accept(f: dict[Any, Any]) -> Message:
    entries = _as_list(_field(f, "e"), "entries")
    return Accept(
        _as_ballot(_field(f, "b")),
        tuple(_slot_entry(e) for e in entries),
        _as_int(_field(f, "c"), "length"),
        _epoch(f),
        _voters(f),
    )


def _accepted(f: dict[Any, Any]) -> Message:
    slots = _as_list(_field(f, "s"), "slots")
    return Accepted(
        _as_ballot(_field(f, "b")),
        tuple(_as_int(s, "slot") for s in slots),
        _as_int(_field(f, "len"), "len"),
        _epoch(f),
    )


def _forward(f: dict[Any, Any]) -> Message:
    return Forward(_as_str(_field(f, "id"), "id"), _as_bytes(_field(f, "v"), "value"))


def _refuse(f: dict[Any, Any]) -> Message:
    return Refuse(
        _as_str(_field(f, "id"), "id"),
        _as_str(_field(f, "code"), "code"),
        _as_str(_field(f, "why"), "reason"),
    )


def _catchup(f: dict[Any, Any]) -> Message:
    return CatchupRequest(_as_int(_field(f, "from"), "from"))


def _entries(f: dict[Any, Any]) -> Message:
    entries = _as_list(_field(f, "e"), "entries")
    return CatchupReply(
        _as_int(_field(f, "from"), "from"),
        tuple(_as_entry(e) for e in entries),
        _as_int(_field(f, "len"), "len"),
    )


def _read_probe(f: dict[Any, Any]) -> Message:
    return ReadProbe(_as_ballot(_field(f, "b")), _as_int(_field(f, "seq"), "seq"), _epoch(f))


def _read_probe_ack(f: dict[Any, Any]) -> Message:
    return ReadProbeAck(_as_ballot(_field(f, "b")), _as_int(_field(f, "seq"), "seq"), _epoch(f))


def _read_index_request(f: dict[Any, Any]) -> Message:
    return ReadIndexRequest(_as_int(_field(f, "id"), "read id"))


def _read_index_reply(f: dict[Any, Any]) -> Message:
    return ReadIndexReply(_as_int(_field(f, "id"), "read id"), _as_int(_field(f, "i"), "index"))


def _status_request(f: dict[Any, Any]) -> Message:
    return StatusRequest(_as_int(_field(f, "id"), "query id"))


def _status_reply(f: dict[Any, Any]) -> Message:
    return StatusReply(
        _as_int(_field(f, "id"), "query id"),
        _as_str(_field(f, "role"), "role"),
        _as_int(_field(f, "leader"), "leader"),
        _as_ballot(_field(f, "b")),
        _as_bool(_field(f, "stop"), "stopped"),
        _as_bool(_field(f, "vote"), "voting"),
        _as_int(_field(f, "slots"), "length"),
        _as_int(_field(f, "n"), "count"),
        _as_str(_field(f, "d"), "digest"),
        tuple(_as_str(p, "problem") for p in _as_list(_field(f, "p"), "problems")),
        _as_str(_field(f, "v"), "version"),
        _as_int(_field(f, "bytes"), "log bytes"),
        _as_int(_field(f, "up"), "uptime"),
    )


_DECODERS: dict[str, Callable[[dict[Any, Any]], Message]] = {
    "prepare": _prepare,
    "promise": _promise,
    "nack": _nack,
    "accept": _accept,
    "accepted": _accepted,
    "forward": _forward,
    "refuse": _refuse,
    "catchup": _catchup,
    "entries": _entries,
    "rprobe": _read_probe,
    "rack": _read_probe_ack,
    "rindex": _read_index_request,
    "rindexed": _read_index_reply,
    "status": _status_request,
    "statusr": _status_reply,
}


def from_wire(obj: Any) -> Message:
    """Decode an untrusted wire object; raise BadMessage for anything malformed."""
    if type(obj) is not dict:
        raise BadMessage("a message must be a map")
    kind = _field(obj, "k")
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        raise BadMessage(f"unknown message kind {kind!r}")
    return decoder(obj)
