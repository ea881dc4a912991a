"""The drain guard (probes/drainguard.py): a process that lifts a starved SCHED_IDLE drain thread.

A BPF ring buffer cannot be made without privileges (nor at all on CI's kernel), so the
real-process tests map a plain file laid out as the ring buffer's first two pages:
consumer position at offset 0, producer position at offset one page.
"""

import mmap
import os
import struct
import subprocess
import threading
import time

import pytest
from callpath.probes.drainguard import GuardProcess, watch

RING = 16 * mmap.PAGESIZE


def test_watch_boosts_only_an_idle_thread_behind_by_the_threshold():
    backlogs = iter([0, 100, 99, 100, 100, 0])
    idle = [True, False, True]  # asked only when the backlog reaches 100
    boosted = []
    rounds = iter(range(6))

    def stopped(interval):
        return next(rounds, None) is None

    n = watch(lambda: next(backlogs), stopped, 100, lambda: idle.pop(0), lambda: boosted.append(1))
    assert n == 2 and boosted == [1, 1] and idle == []


def test_watch_stops_when_the_thread_is_gone():
    def gone():
        raise ProcessLookupError(1)

    n = watch(lambda: 10**9, lambda interval: False, 1, gone, lambda: None)
    assert n == 0


@pytest.fixture
def ring_file(tmp_path):
    path = tmp_path / "ring"
    path.write_bytes(bytes(2 * mmap.PAGESIZE))
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def set_positions(fd, cons, prod):
    os.pwrite(fd, struct.pack("<Q", cons), 0)
    os.pwrite(fd, struct.pack("<Q", prod), mmap.PAGESIZE)


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_the_guard_process_sets_a_starved_idle_thread_to_normal_when_half_full(ring_file):
    tid = {}
    done = threading.Event()

    def drain():
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        tid["tid"] = threading.get_native_id()
        done.wait(30)

    t = threading.Thread(target=drain)
    t.start()
    try:
        assert wait_for(lambda: "tid" in tid)
        guard = GuardProcess(ring_file, RING, tid["tid"], 0.5, interval=0.01)
        assert wait_for(lambda: guard.ready()), guard.error
        set_positions(ring_file, 1000, 1000 + RING // 2 - 8)  # just under half: left alone
        time.sleep(0.2)
        assert os.sched_getscheduler(tid["tid"]) == os.SCHED_IDLE
        set_positions(ring_file, 1000, 1000 + RING // 2)
        assert wait_for(lambda: os.sched_getscheduler(tid["tid"]) == os.SCHED_OTHER)
        assert guard.stop() == 1
        assert guard.proc.returncode == 0
    finally:
        done.set()
        t.join()


def test_the_guard_never_touches_a_thread_of_another_process(ring_file):
    other = subprocess.Popen(["sleep", "30"])
    try:
        os.sched_setscheduler(other.pid, os.SCHED_IDLE, os.sched_param(0))
        set_positions(ring_file, 0, RING)
        guard = GuardProcess(ring_file, RING, other.pid, 0.5, interval=0.01)
        assert wait_for(lambda: guard.ready()), guard.error
        time.sleep(0.2)
        assert os.sched_getscheduler(other.pid) == os.SCHED_IDLE
        assert guard.stop() == 0
    finally:
        other.kill()
        other.wait()


def test_a_guard_that_cannot_map_says_why(tmp_path):
    fd = os.open(tmp_path / "empty", os.O_RDWR | os.O_CREAT)  # a file of 0 bytes cannot be mapped
    try:
        guard = GuardProcess(fd, RING, threading.get_native_id(), 0.5)
        assert wait_for(lambda: guard.ready() is not False)
        assert guard.ready() is None and "cannot map" in guard.error
        assert guard.stop() == 0
    finally:
        os.close(fd)
