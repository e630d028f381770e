"""The results of the control protocol's operations, one pydantic model each (the arguments are
the services' `control.Args`). A service's handler returns one; the CLI validates what it
receives against the same model (`control.call(..., reply=Model)`), so a reply that is not what
this version expects is a clear error, not a KeyError deep in a renderer.

The wire is each model's JSON object, exactly the dicts the services sent before these models
existed. Rolling deploys: a model ignores keys it does not know (a newer service may send more),
and a field added later gets a default (an older service does not send it); renaming or
retyping a field breaks one side or the other, so add a new field instead.

Names: a log's length (applied slots, no-ops included) is `slots`, the number of applied
requests (log positions) `entries`, in these replies as in `paxmr -o json`; the core and the
services call them `length` and `count` (paxmr/paxos/log.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from paxmr.control import Result


class _Sparse(Result):
    """A result whose optional keys in `OMIT_NONE` are left out of the wire when None, as the
    services sent them before these models (a reader tests `"error" in summary`)."""

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = dump(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.OMIT_NONE}


# --- mapper and reducer ---------------------------------------------------------------------------


class SplitResult(Result):
    ranges: list[tuple[int, int]]  # (offset, size) of each part, in file order


class MapResult(Result):
    output: str  # the intermediate tally written, {F}_I_{id}
    distinct: int  # distinct words in it
    bytes: int  # the size of the range counted


class MapperStatus(Result):
    role: Literal["mapper"] = "mapper"
    id: int


class ReduceResult(Result):
    output: str  # the reduced tally written, {F}_reduced
    distinct: int  # distinct words in it


class ReducerStatus(Result):
    role: Literal["reducer"] = "reducer"


# --- PRM: replicate and queries ------------------------------------------------------------------


class Replicated(Result):
    file: str
    position: int | None  # among applied requests (the core's Committed type allows None)
    slot: int
    request_id: str
    digest: str  # of the log object's content


class Freshness(Result):
    """How a query's answer relates to the cluster's log (see Prm._freshness)."""

    consistent: bool
    read_index: int | None  # the applied length a consistent read waited for
    stopped: bool
    leader: int | None
    behind: int  # slots the leader announced that are not applied here
    warning: str | None  # "may be stale: ..." for a local read with problems


class Total(Result):
    positions: list[int]
    total: int
    freshness: Freshness


class Merged(Result):
    positions: list[int]
    distinct: int
    total: int
    words: list[tuple[str, int]]  # the most common first
    freshness: Freshness


class LogSummary(_Sparse):
    """What a replica shows of one log position (LogObject.summary); a value that is not a log
    object keeps its position with `file` None and an `error`."""

    OMIT_NONE = frozenset({"node", "distinct", "digest", "request_id", "error"})

    position: int
    file: str | None
    node: int | None = None
    words: int
    distinct: int | None = None
    digest: str | None = None
    request_id: str | None = None
    error: str | None = None
    slot: int


class Printed(Result):
    entries: list[LogSummary]
    digest: str  # running SHA-256 over the applied requests
    freshness: Freshness


# --- PRM: operator --------------------------------------------------------------------------------


class Stopped(Result):
    stopped: bool


class LogUsage(Result):
    """The log's size against its quota (limits.log_bytes, limits.log_entries)."""

    bytes: int
    bytes_quota: int | None
    entries: int
    entries_quota: int | None
    full: bool
    heavy_running: int  # requests running in the PRM's worker processes


class Peer(Result):
    up: bool  # an authenticated message arrived within the election timeout
    heard_s_ago: float | None
    connected: bool  # a TCP connection is open


class Replica(Result):
    """What `paxmr status` and `paxmr status --cluster` both show of a replica."""

    role: str
    leader: int | None
    ballot: tuple[int, int]  # (round, node) promised
    stopped: bool
    voting: bool
    slots: int
    entries: int
    digest: str  # running SHA-256 over the applied requests
    problems: list[str]
    uptime_s: float


class View(Replica):
    """A member as it sees itself (Prm.view), as `paxmr status --cluster` shows it."""

    version: str
    log_bytes: int


class PrmStatus(Replica):
    """`paxmr status`'s replica, with what only this node knows."""

    node: int
    healthy: bool
    behind: int  # slots the leader announced that are not applied here
    quorum: int
    in_flight: int
    pending: int
    log: LogUsage
    peers: dict[str, Peer]  # by node id


class Metrics(Result):
    text: str  # Prometheus exposition format


class BackupInfo(Result):
    """What a storage holds (backup.describe), and for a backup its size and path."""

    entries: int
    slots: int
    digest: str
    voting: bool
    acceptor_state: bool
    cluster_id: str | None
    members: list[int] | None
    bytes: int | None = None
    path: str | None = None


class Member(Result):
    node: int
    address: str | None  # host:port
    role: Literal["voter", "learner"]
    leader: bool
    applied: int | None  # its applied slots, where known
    behind: int | None
    heard_s_ago: float | None


class Members(Result):
    epoch: int
    quorum: int
    members: list[Member]


class ClusterMember(Member, _Sparse):
    OMIT_NONE = frozenset({"error"})

    replica: View | None  # the member's own view; None if it did not answer in time
    error: str | None = None  # why there is no view


class Cluster(Result):
    """`paxmr status --cluster`: `paxmr member list`'s rows, each with the member's view."""

    epoch: int
    quorum: int
    members: list[ClusterMember]
    asked_by: int  # the node whose PRM asked the others


class MemberAdded(Result):
    node: int
    role: Literal["voter", "learner"]
    caught_up: bool
    epoch: int


class MemberRemoved(Result):
    node: int
    removed: bool
    epoch: int
