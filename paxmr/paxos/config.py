"""Tunables of the core. Times are seconds on whatever clock the driver passes in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreConfig:
    heartbeat_interval: float = 0.05
    election_timeout_min: float = 0.3
    election_timeout_max: float = 0.6
    # A failed campaign doubles the next election timeout, up to this factor.
    max_backoff: float = 8.0
    max_value_bytes: int = 4 * 1024 * 1024
    # Slots a leader may have proposed but not yet applied; also bounds a node's pending requests.
    max_in_flight: int = 1024
    catchup_batch: int = 256
    # An accept or catch-up message carries entries up to about this many value bytes (always at
    # least one entry), so a batch fits the transport's frame limit.
    batch_bytes: int = 1024 * 1024
    request_timeout: float = 5.0
    # How long a leader may keep a decision on its own client's request from its followers,
    # waiting for an Accept that would carry the chosen length anyway (Node._announce_due); 0
    # announces every decision at once.
    announce_delay: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout_min <= self.election_timeout_max:
            raise ValueError("need 0 < heartbeat_interval < election_timeout_min <= max")
        if not 0 <= self.announce_delay <= self.heartbeat_interval:
            raise ValueError("need 0 <= announce_delay <= heartbeat_interval")
        if min(self.max_backoff, self.max_in_flight, self.catchup_batch, self.batch_bytes) < 1:
            raise ValueError("max_backoff, max_in_flight, catchup_batch, batch_bytes must be >= 1")
