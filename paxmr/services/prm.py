"""The Paxos Replication Module: drives the sans-IO core with its storage and the peer transport.

One driver task owns the core's output: it takes a Ready, commits its persist (one fsync, in a
worker thread so the loop keeps receiving), and only then sends its messages and answers its
clients. Inputs that arrive during a commit are batched into the next Ready (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from paxmr import control, logs, paths, paxos
from paxmr.catalog import Catalog
from paxmr.logobject import BadLogObject, LogObject, merge, show
from paxmr.paxos.messages import Forward, Refuse
from paxmr.services import daemon, observe
from paxmr.services.transport import Transport
from paxmr.settings import ConfigError, Settings
from paxmr.storage import Identity, Storage
from paxmr.wordcount import tally

DB_NAME = "prm.db"


def db_path(settings: Settings) -> Path:
    return settings.state_dir / DB_NAME


def initialize(settings: Settings, cluster_id: str | None = None) -> tuple[Path, Identity]:
    """Create the storage of a founding member of a new cluster (it may vote from the start).
    Every founding member gets the same `cluster_id`; one is made up when none is given."""
    path = db_path(settings)
    if path.exists():
        raise FileExistsError(f"{path} already exists: this node is initialized")
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity(cluster_id or uuid.uuid4().hex, tuple(sorted(n.id for n in settings.nodes)))
    Storage.open(path, bootstrap=True, identity=identity).close()
    return path, identity


def check_identity(settings: Settings, identity: Identity | None) -> None:
    """Refuse to start with a member list other than the one this node's cluster was founded
    with: quorums computed from two lists can overlap in no node (issue 9)."""
    configured = tuple(sorted(n.id for n in settings.nodes))
    if identity is not None and configured != identity.members:
        raise ConfigError(
            f"the configured members {list(configured)} differ from the members"
            f" {list(identity.members)} of cluster {identity.cluster_id}, which this node's"
            f" storage ({db_path(settings)}) belongs to. A member list is not changed by"
            " editing the configuration: restore the founding list"
        )


class ReplicateArgs(control.Args):
    file: str
    request_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=paxos.MAX_REQUEST_ID
    )


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


_INLINE_TALLY = 64 * 1024  # bytes


def _same_tally(a: LogObject | None, b: LogObject) -> bool:
    return a is not None and (a.file, a.digest) == (b.file, b.digest)


def _decoded(value: bytes) -> LogObject | None:
    try:
        return LogObject.decode(value)
    except BadLogObject:
        return None  # a forged entry under this request id: a conflict


class Prm:
    def __init__(self, settings: Settings, storage: Storage) -> None:
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
            batch_bytes=settings.limits.batch_bytes,
            request_timeout=t.replicate_timeout,
        )
        durable = storage.load()
        self.node = paxos.Node(
            settings.node_id,
            [n.id for n in settings.nodes],
            durable,
            config,
            random.Random(),  # election jitter, not a secret
            time.monotonic(),
        )
        self.catalog = Catalog()
        self.slots_applied = 0
        for entry in durable.log:
            self._applied(entry)
        self._checks: set[asyncio.Task[None]] = set()  # forwarded values being validated
        self.waiting: dict[str, asyncio.Future[paxos.Committed | paxos.Refused]] = {}
        self.wake = asyncio.Event()
        peers = [n for n in settings.nodes if n.id != settings.node_id]
        self.observer = observe.Observer(
            settings.node_id, [p.id for p in peers], db_path(settings), t.election_max
        )
        self.transport = Transport(
            settings.node_id, peers, settings.tls_files(), settings.limits.frame_bytes,
            self._deliver,
        )  # fmt: skip

    def _applied(self, entry: paxos.LogEntry) -> None:
        self.slots_applied += 1  # what queries see; the core's own length runs ahead of it
        summary = self.catalog.apply(entry)
        if summary is not None and "error" in summary:
            self.log.error("bad_log_object", slot=entry.slot, error=summary["error"])

    def _deliver(self, src: int, msg: paxos.Message) -> None:
        self.observer.heard_from(src, msg, time.monotonic())
        if isinstance(msg, Forward):
            # Checked before the leader proposes it, in a worker thread: a value can be large.
            task = asyncio.create_task(self._check_forward(src, msg))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self.node.receive(src, msg, time.monotonic())
        self.wake.set()

    async def _check_forward(self, src: int, msg: Forward) -> None:
        try:
            await asyncio.to_thread(LogObject.decode, msg.value)
        except BadLogObject as exc:
            self.log.warning("forward_refused", src=src, request_id=msg.request_id, error=str(exc))
            self.transport.send(src, Refuse(msg.request_id, "invalid", f"not a log object: {exc}"))
            return
        self.node.receive(src, msg, time.monotonic())
        self.wake.set()

    async def drive(self) -> None:
        while True:
            delay = self.node.next_deadline() - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), min(delay, 1.0))
            self.wake.clear()
            now = time.monotonic()
            if now >= self.node.next_deadline():
                self.node.on_timer(now)
            ready = self.node.ready()
            await self._carry_out(ready)
            self.observer.after_ready(self.node.status(), len(ready.applied))

    async def _carry_out(self, ready: paxos.Ready) -> None:
        """Commit the Ready's persist, holding back only what depends on it (paxos.Ready).

        Accepts, chosen entries and replies leave at once, so the leader's fsync overlaps its
        followers'; the next Ready is taken only after this commit.
        """
        early, after_commit = paxos.split(ready)
        self._release(early)
        if ready.persist:
            with self.observer.fsync.time():
                await asyncio.to_thread(self.storage.commit, ready.persist)
        self._release(after_commit)

    def _release(self, ready: paxos.Ready) -> None:
        for dst, msg in ready.messages:
            self.transport.send(dst, msg)
        for entry in ready.applied:
            self._applied(entry)
            if entry.position is not None:
                self.log.debug("applied", slot=entry.slot, position=entry.position)
        for reply in ready.replies:
            future = self.waiting.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply.outcome)

    # --- control operations ------------------------------------------------------------------

    async def replicate(self, args: ReplicateArgs, _p: control.Progress) -> dict[str, Any]:
        with paths.open_input(self.settings.data_dir, args.file) as source:  # race-free
            parse = functools.partial(
                LogObject.from_tally, source, args.file, self.settings.node_id, args.request_id
            )
            size = os.fstat(source.fileno()).st_size
            limit = self.settings.limits.value_bytes
            if size > 2 * limit:
                # Its log object would be larger still (a tally line never takes more than
                # twice its encoded bytes): refused before it is read at all.
                raise control.ControlError(
                    "too_large", f"{args.file} is {size} bytes: its log object would exceed {limit}"
                )
            try:
                # A large tally is parsed in a worker thread, so the loop keeps heartbeating; a
                # small one costs less than the hand-off to the thread.
                big = size > _INLINE_TALLY
                obj = await asyncio.to_thread(parse) if big else parse()
            except tally.TallyError as exc:
                raise control.ControlError("bad_tally", f"not a reduced tally: {exc}") from exc
        value = obj.encode()
        future = self.waiting.get(args.request_id)
        if future is None:
            future = self.waiting[args.request_id] = asyncio.get_running_loop().create_future()
            self.node.submit(paxos.Request(args.request_id, value), time.monotonic())
            self.wake.set()
        # The core refuses on its own request timeout; this bound only guards against a bug.
        outcome = await asyncio.wait_for(
            asyncio.shield(future), self.settings.timing.replicate_timeout * 2
        )
        if isinstance(outcome, paxos.Refused) and outcome.code in _UNKNOWN_OUTCOME:
            code = "no_quorum" if outcome.code in {"timeout", "no_quorum"} else outcome.code
            raise control.ControlError(
                code,
                f"{outcome.reason}. The outcome is unknown: the entry may still land. Retry"
                f" with --request-id {args.request_id} so that it lands at most once.",
            )
        if isinstance(outcome, paxos.Refused):
            raise control.ControlError(outcome.code, f"replicate refused: {outcome.reason}")
        landed = self.node.log.entries[outcome.slot].value
        # The same retry sent through another node differs only in its "node" field.
        if landed != value and not _same_tally(_decoded(landed), obj):
            raise control.ControlError(
                "conflict",
                f"request id {args.request_id} is already in the log at position"
                f" {outcome.position} with other content: use a new request id",
            )
        self.log.info("replicated", file=args.file, position=outcome.position, slot=outcome.slot)
        return {"file": args.file, "position": outcome.position, "slot": outcome.slot,
                "request_id": args.request_id, "digest": obj.digest}  # fmt: skip

    def _objects(self, positions: list[int]) -> list[LogObject]:
        self._check_positions(positions)
        entries = self.node.log.entries  # slot i at index i
        decoded: dict[int, LogObject] = {}  # one copy per position, however often it is listed
        for p in positions:
            if p in decoded:
                continue
            try:
                decoded[p] = LogObject.decode(entries[self.catalog.summaries[p]["slot"]].value)
            except BadLogObject as exc:
                raise control.ControlError("bad_entry", f"log position {p}: {exc}") from exc
        return [decoded[p] for p in positions]

    def _check_positions(self, positions: list[int]) -> None:
        count = len(self.catalog.summaries)
        bad = [p for p in positions if not 0 <= p < count]
        if bad:
            s = self.node.status()
            problems = self.observer.problems(s, time.monotonic())
            behind = self.observer.behind_by(s)
            if behind:
                problems.append(f"behind the leader by {behind} slots")
            note = f" (this node may be stale: {'; '.join(problems)})" if problems else ""
            have = f"the log has positions 0..{count - 1}" if count else "the log is empty"
            raise control.ControlError("bad_position", f"no log position {bad[0]}: {have}{note}")

    # Queries decode whole tallies: they run in a worker thread, off the loop that heartbeats.
    # Their results are logged too, as the assignment's PRM printed them.

    async def total(self, args: PositionsArgs, _p: control.Progress) -> dict[str, Any]:
        fresh = await self._freshness(args.consistent)
        self._check_positions(args.positions)
        total = sum(self.catalog.summaries[p]["words"] for p in args.positions)
        self.log.info("total", positions=args.positions, total=total)
        return {"positions": args.positions, "total": total, "freshness": fresh}

    async def merge(self, args: MergeArgs, _p: control.Progress) -> dict[str, Any]:
        fresh = await self._freshness(args.consistent)
        objects = await asyncio.to_thread(self._objects, args.positions)
        merged = await asyncio.to_thread(merge, objects)
        top = [[show(w), n] for w, n in merged.most_common(args.top or None)]
        self.log.info("merge", positions=args.positions, distinct=len(merged), top=top[:10])
        return {
            "positions": args.positions,
            "distinct": len(merged),
            "total": sum(merged.values()),
            "words": top,
            "freshness": fresh,
        }

    async def print_log(self, args: ReadArgs, _p: control.Progress) -> dict[str, Any]:
        fresh = await self._freshness(args.consistent)
        self.log.info(
            "print",
            files=[e["file"] for e in self.catalog.summaries],
            digest=self.catalog.digest.hex(),
        )
        return {
            "entries": self.catalog.summaries,
            "digest": self.catalog.digest.hex(),
            "freshness": fresh,
        }

    async def _freshness(self, consistent: bool) -> dict[str, Any]:
        """How this replica's answer relates to the cluster's log; waits first if consistent.

        A consistent read waits until this replica has applied every slot chosen before the read
        started (observe.Observer.fresh_target), or fails within the replicate timeout.
        """
        obs = self.observer
        start = time.monotonic()
        target: int | None = None
        obs.reads.labels("consistent" if consistent else "local").inc()
        if consistent:
            deadline = start + self.settings.timing.replicate_timeout
            while True:
                s = self.node.status()
                if s.stopped:
                    raise control.ControlError(  # no quorum reachable from here: exit 5
                        "no_quorum",
                        "this node is stopped: a consistent read needs `paxmr resume`",
                    )
                if target is None:  # fixed once known: a busy leader's target would run away
                    target = obs.fresh_target(s, start)
                # Queries answer from what this driver applied (the catalog), not the core's log.
                if target is not None and self.slots_applied >= target:
                    break
                if time.monotonic() > deadline:
                    raise control.ControlError(
                        "no_quorum",
                        "no consistent read: this node could not confirm the leader's committed"
                        f" log within {self.settings.timing.replicate_timeout:g} s"
                        f" ({'; '.join(obs.problems(s, time.monotonic())) or 'still catching up'})",
                    )
                await asyncio.sleep(0.01)
        s = self.node.status()
        now = time.monotonic()
        behind = obs.behind_by(s)
        problems = obs.problems(s, now)
        if behind and not consistent:
            problems.append(f"behind the leader by {behind} slots")
        return {
            "consistent": consistent,
            "read_index": target,  # the applied length a consistent read waited for
            "stopped": s.stopped,
            "leader": obs.leader(s, now),
            "behind": behind,
            "warning": None if consistent or not problems else
                       "may be stale: " + "; ".join(problems),
        }  # fmt: skip

    async def stop(self, _a: control.NoArgs, _p: control.Progress) -> dict[str, Any]:
        self.node.stop(time.monotonic())
        self.wake.set()
        self.log.warning("stopped_by_operator")
        return {"stopped": True}

    async def resume(self, _a: control.NoArgs, _p: control.Progress) -> dict[str, Any]:
        self.node.resume(time.monotonic())
        self.wake.set()
        self.log.warning("resumed_by_operator")
        return {"stopped": False}

    async def status(self, _a: control.NoArgs, _p: control.Progress) -> dict[str, Any]:
        s = self.node.status()
        now = time.monotonic()
        obs = self.observer
        problems = obs.problems(s, now)
        return {
            "node": s.node,
            "role": s.role,
            "leader": obs.leader(s, now),
            "healthy": not problems,
            "problems": problems,
            "behind": obs.behind_by(s),
            "quorum": obs.quorum,
            "uptime_s": round(now - obs.started, 1),
            "ballot": [s.promised.round, s.promised.node],
            "stopped": s.stopped,
            "voting": s.voting,
            "slots": s.chosen,
            "entries": len(self.catalog.summaries),
            "digest": self.catalog.digest.hex(),
            "in_flight": s.in_flight,
            "pending": s.pending,
            "peers": obs.peer_table(now, set(self.transport.connected)),
        }

    async def metrics(self, _a: control.NoArgs, _p: control.Progress) -> dict[str, Any]:
        return {"text": self.observer.exposition()}

    async def observed_replicate(self, args: ReplicateArgs, p: control.Progress) -> dict[str, Any]:
        outcome = "internal"
        try:
            with self.observer.commit_latency.time():
                result = await self.replicate(args, p)
            outcome = "ok"
        except control.ControlError as exc:
            outcome = exc.code
            raise
        except (FileNotFoundError, paths.PathRefused):
            outcome = "bad_file"
            raise
        finally:
            self.observer.requests.labels(outcome).inc()
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
        }


async def main(settings: Settings) -> None:
    storage = Storage.open(db_path(settings))
    try:
        check_identity(settings, storage.identity())
    except ConfigError:
        storage.close()
        raise
    prm = Prm(settings, storage)
    me = settings.me
    await prm.transport.start(settings.peer_bind or me.host, me.port)
    if settings.metrics_port is not None:
        observe.serve_http(prm.observer, settings.metrics_host, settings.metrics_port)
    try:
        await daemon.serve(settings, prm.ops(), settings.prm_socket, background=[prm.drive])
    finally:
        await prm.transport.close()
        storage.close()
