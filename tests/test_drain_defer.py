"""``--drain defer`` (probes/drainsched.py DeferGate): records wait in the ring buffer until traffic pauses."""

import threading
import types

import pytest
from callpath.probes.drainsched import HIGH_WATER, LOW_WATER, QUIET_S, DeferGate, DrainScheduler, defer_gate
from callpath.probes.loader import Recorder

RING = 4 << 20


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_records_wait_while_the_producer_moves():
    clock = Clock()
    gate = DeferGate(RING, clock=clock)
    for i in range(1, 50):
        clock.t += 0.05
        assert not gate.due(0, i * 4800)  # 100 records per poll, far below half full
    assert gate.catch_ups == 0 and gate.pauses == 0


def test_a_pause_drains_what_waits_and_counts_once():
    clock = Clock()
    gate = DeferGate(RING, clock=clock)
    assert not gate.due(0, 48_000)
    clock.t += QUIET_S / 2
    assert not gate.due(0, 48_000)  # quiet, but not for long enough
    clock.t += QUIET_S
    assert gate.due(0, 48_000)
    assert gate.due(24_000, 48_000)  # still quiet, still something waiting
    assert not gate.due(48_000, 48_000)  # empty: nothing to read
    assert gate.pauses == 1
    clock.t += 0.01
    assert not gate.due(48_000, 96_000)  # traffic again: wait again


def test_half_full_catches_up_until_below_an_eighth():
    clock = Clock()
    gate = DeferGate(RING, clock=clock)
    half = int(RING * HIGH_WATER)
    assert gate.due(0, half)  # producer still moving, but half full
    assert gate.catch_ups == 1
    clock.t += 0.01
    assert gate.due(half - int(RING * LOW_WATER), half + 4800)  # above 1/8: keeps draining
    clock.t += 0.01
    assert not gate.due(half, half + 9600)  # below 1/8 and moving: waits again
    assert gate.catch_ups == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        DeferGate(0)
    with pytest.raises(ValueError):
        DeferGate(RING, quiet_s=-1)


def test_defer_gate_only_for_defer_and_the_mmap_reader():
    said = []
    assert defer_gate("normal", RING, True, said.append) is None
    assert defer_gate("yield", RING, True, said.append) is None
    assert said == []
    assert defer_gate("defer", RING, False, said.append) is None
    assert "draining as normal" in said[-1]
    gate = defer_gate("defer", RING, True, said.append)
    assert isinstance(gate, DeferGate)
    assert "4 MiB" in said[-1] and "43,690 events" in said[-1]


def test_drain_scheduler_never_switches_under_defer():
    sched = DrainScheduler("defer", RING)
    assert not sched.active


class FakeRing:
    """A ring buffer whose producer runs ahead by ``step`` bytes per poll while ``flowing``."""

    def __init__(self, step):
        self.cons = self.prod = 0
        self.step = step
        self.flowing = True

    def positions(self):
        if self.flowing:
            self.prod += self.step
        return self.cons, self.prod


def run_poll_loop(ring, gate, polls, stop_flow_at, clock=None):
    """Recorder._poll_loop on a stand-in recorder: returns the polls at which it drained."""
    drained = []
    stop = threading.Event()
    n = [0]

    def wait(s):
        n[0] += 1
        if clock is not None:
            clock.t += s
        if n[0] == stop_flow_at:
            ring.flowing = False
        if n[0] >= polls:
            stop.set()
        return stop.is_set()

    def drain():
        drained.append(n[0])
        got = ring.prod - ring.cons
        ring.cons = ring.prod
        return got // 48

    rec = types.SimpleNamespace(_stop=types.SimpleNamespace(is_set=stop.is_set, wait=wait), _ring=ring,
                                _drain=drain, aggregate_mode=False, pending=False, _next_report=float("inf"))
    Recorder._poll_loop(rec, DrainScheduler("normal", RING), RING // 48 // 8, gate)
    return drained


def test_poll_loop_reads_nothing_while_a_burst_lasts():
    ring = FakeRing(48 * 1000)
    clock = Clock()
    gate = DeferGate(RING, clock=clock)
    drained = run_poll_loop(ring, gate, polls=40, stop_flow_at=20, clock=clock)
    # nothing read before the flow stopped, then read once it had been quiet QUIET_S (8 polls)
    assert drained and min(drained) >= 20 + QUIET_S / 0.025 - 1
    assert ring.cons == ring.prod  # and everything read after


def test_poll_loop_without_a_gate_reads_every_poll():
    ring = FakeRing(48 * 1000)
    drained = run_poll_loop(ring, None, polls=10, stop_flow_at=99)
    assert len(drained) >= 9
