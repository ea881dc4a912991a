"""The drain thread's scheduling policy (probes/drainsched.py): SCHED_IDLE while it keeps up."""

import os
import threading

import pytest
from callpath.probes.drainsched import HIGH_WATER, LOW_WATER, DrainScheduler

RING = 4 << 20


class Thread:
    """A fake thread's policy: the setter changes it, the getter reads it, a fake guard can too."""

    def __init__(self):
        self.policy = os.SCHED_OTHER
        self.calls = []

    def set(self, pid, policy, param):
        self.calls.append((pid, policy))
        self.policy = policy

    def get(self, pid):
        return self.policy


class Guard:
    def __init__(self, states=(True,), boosts=0, error=""):
        self.states = list(states)
        self.boosts = boosts
        self.error = error
        self.stopped = False
        self.tid = None

    def ready(self):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def stop(self):
        self.stopped = True
        return self.boosts


def sched(policy="yield", guard=None, **kw):
    t = Thread()
    g = guard if guard is not None else Guard()

    def spawn(tid):
        g.tid = tid
        return g

    return t, g, DrainScheduler(policy, RING, guard=spawn, setter=t.set, getter=t.get, **kw)


def test_yield_goes_idle_then_normal_when_half_full_and_back_below_an_eighth():
    t, g, s = sched()
    s.start()
    assert g.tid == threading.get_native_id() and t.calls == []  # nothing before the guard watches
    s.update(0)
    assert t.calls == [(0, os.SCHED_IDLE)] and s.idle
    s.update(int(RING * HIGH_WATER) - 1)  # under half: stays idle, no syscall
    assert len(t.calls) == 1
    s.update(int(RING * HIGH_WATER))
    assert t.calls[-1] == (0, os.SCHED_OTHER) and not s.idle and s.boosts == 1
    s.update(int(RING * LOW_WATER))  # hysteresis: an eighth is not below an eighth
    assert len(t.calls) == 2
    s.update(int(RING * LOW_WATER) - 1)
    assert t.calls[-1] == (0, os.SCHED_IDLE) and s.idle
    s.update(RING)
    assert s.boosts == 2 and len(t.calls) == 4
    s.update(0)
    s.finish()  # the last drains, after detaching, at the normal policy
    assert t.calls[-2:] == [(0, os.SCHED_IDLE), (0, os.SCHED_OTHER)] and len(t.calls) == 6
    assert g.stopped


def test_idle_only_once_the_guard_watches():
    t, _, s = sched(guard=Guard(states=(False, False, True)))
    s.start()
    s.update(0)
    s.update(0)
    assert t.calls == []
    s.update(0)
    assert t.calls == [(0, os.SCHED_IDLE)]


def test_a_boost_by_the_guard_is_seen_and_undone_once_the_drain_caught_up():
    t, _, s = sched(guard=Guard(boosts=3))
    s.start()
    s.update(0)
    t.policy = os.SCHED_OTHER  # the guard boosted the starved thread
    s.update(int(RING * HIGH_WATER))  # still behind: stays normal, no boost of its own
    assert not s.idle and s.boosts == 0 and t.calls == [(0, os.SCHED_IDLE)]
    s.update(0)
    assert t.calls[-1] == (0, os.SCHED_IDLE) and s.idle
    s.finish()
    assert s.guard_boosts == 3 and t.calls[-1] == (0, os.SCHED_OTHER)


def test_a_failed_guard_leaves_the_thread_normal_and_says_why():
    said = []
    t, _, s = sched(guard=Guard(states=(False, None), error="cannot map the ring buffer: EPERM"),
                    progress=said.append)
    s.start()
    for _ in range(4):
        s.update(RING if _ % 2 else 0)
    s.finish()
    assert t.calls == [] and len(said) == 1 and "EPERM" in said[0] and "normal policy" in said[0]


def test_a_guard_that_cannot_start_leaves_the_thread_normal():
    said = []
    t = Thread()

    def spawn(tid):
        raise OSError(24, "Too many open files")

    s = DrainScheduler("yield", RING, guard=spawn, setter=t.set, getter=t.get, progress=said.append)
    s.start()
    s.update(0)
    s.finish()
    assert t.calls == [] and len(said) == 1 and "Too many open files" in said[0]


def test_normal_never_switches_nor_starts_a_guard():
    t, g, s = sched("normal")
    s.start()
    s.update(RING)
    s.update(0)
    s.finish()
    assert t.calls == [] and s.boosts == 0 and g.tid is None


def test_a_refused_switch_is_said_once_and_the_thread_stays_normal():
    said = []

    def refuse(pid, policy, param):
        raise PermissionError(1, "Operation not permitted")

    s = DrainScheduler("yield", RING, guard=lambda tid: Guard(), setter=refuse, getter=lambda pid: os.SCHED_OTHER,
                       progress=said.append)
    s.start()
    s.update(RING)
    s.update(0)
    s.finish()
    assert not s.idle and s.boosts == 0 and len(said) == 1 and "stays at the normal policy" in said[0]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="normal, yield"):
        DrainScheduler("fifo", RING)


def test_the_real_syscall_switches_only_the_calling_thread():
    """SCHED_IDLE needs no privilege; pid 0 in sched_setscheduler(2) is the calling thread."""
    seen = {}

    def drain_thread():
        s = DrainScheduler("yield", RING, guard=lambda tid: Guard())
        s.start()
        s.update(0)
        seen["idle"] = os.sched_getscheduler(0)
        seen["main"] = os.sched_getscheduler(os.getpid())
        s.update(RING)
        seen["boosted"] = os.sched_getscheduler(0)

    t = threading.Thread(target=drain_thread)
    t.start()
    t.join()
    assert seen == {"idle": os.SCHED_IDLE, "main": os.SCHED_OTHER, "boosted": os.SCHED_OTHER}
