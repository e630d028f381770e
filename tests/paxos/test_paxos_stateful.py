"""Hypothesis drives three nodes through arbitrary schedules; safety must hold after every step."""

from __future__ import annotations

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from paxmr.paxos import Committed
from tests.paxos.paxos_harness import Harness

NODES = st.integers(1, 3)


class Schedules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()

    def _alive(self, i: int) -> bool:
        return self.h.nodes[i] is not None

    @rule(node=NODES, k=st.integers(0, 9))
    def submit(self, node, k):
        if self._alive(node):
            self.h.submit(node, f"r{k}", f"value {k}".encode())

    @rule(pick=st.integers(0, 10_000))
    def deliver_any(self, pick):
        wire = self.h.wire
        if wire:
            wire.rotate(-(pick % len(wire)))  # any message may overtake the others
            self.h.deliver(limit=1)

    @rule(pick=st.integers(0, 10_000))
    def drop(self, pick):
        if self.h.wire:
            del self.h.wire[pick % len(self.h.wire)]

    @rule(pick=st.integers(0, 10_000))
    def duplicate(self, pick):
        if self.h.wire:
            self.h.wire.append(self.h.wire[pick % len(self.h.wire)])

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2, 0.5]))
    def time_passes(self, seconds):
        self.h.now += seconds
        for i, node in self.h.nodes.items():
            if node is not None and node.next_deadline() <= self.h.now:
                node.on_timer(self.h.now)
                self.h.flush(i)

    @rule(seconds=st.sampled_from([0.1, 0.3, 1.0]))
    def network_settles(self, seconds):
        self.h.deliver()
        self.h.advance(seconds)

    @rule(node=NODES)
    def partition_or_heal(self, node):
        self.h.cut ^= {node}  # a cut node neither sends nor receives

    @rule(node=NODES)
    def crash_and_restart(self, node):
        self.h.crash(node)
        self.h.start(node)

    @rule(node=NODES)
    def stop_or_resume(self, node):
        if self._alive(node):
            n = self.h.node(node)
            if n.stopped:
                n.resume(self.h.now)
            else:
                n.stop(self.h.now)
            self.h.flush(node)

    @invariant()
    def logs_agree_and_apply_each_request_once(self):
        slots: dict[int, tuple[str, bytes]] = {}
        first: dict[str, int] = {}
        for log in self.h.applied.values():
            for expected_slot, entry in enumerate(log):
                assert entry.slot == expected_slot
                value = (entry.request_id, entry.value)
                assert slots.setdefault(entry.slot, value) == value
                if entry.position is not None:
                    assert first.setdefault(entry.request_id, entry.slot) == entry.slot
        for node, replies in self.h.replies.items():
            for reply in replies:
                if isinstance(reply.outcome, Committed):
                    assert slots[reply.outcome.slot][0] == reply.request_id, node

    def teardown(self) -> None:
        applied = max(len(log) for log in self.h.applied.values())
        event(f"longest log {'0' if applied == 0 else '1-4' if applied < 5 else '5+'}")


Schedules.TestCase.settings = settings(max_examples=100, stateful_step_count=80, deadline=None)
TestSchedules = Schedules.TestCase
