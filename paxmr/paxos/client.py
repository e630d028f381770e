"""What a local client asks of the core and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass

# Request ids are at most this long (the control API's limit too), so that the framing budgets
# (messages.wire_cost) hold for every entry a peer can make the leader propose.
MAX_REQUEST_ID = 128


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Committed:
    """The request is applied: `position` among applied requests (what `print` shows), `slot`.
    A membership change has no position."""

    position: int | None
    slot: int


@dataclass(frozen=True, slots=True)
class Refused:
    """Codes: stopped, too_large, invalid, busy (flow control); and timeout, no_quorum and
    interrupted (stopped while pending), after which the request may still be chosen."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: str
    outcome: Committed | Refused
