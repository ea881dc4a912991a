"""The drain thread's CPU scheduling class: yield to the traced workload, catch up when the ring fills.

The thread that copies events out of the ring buffer (probes/loader.py
``Recorder._poll``) works in bursts, a few times a second. Under a normal
policy each burst delays the wakeups of the traced workload's own threads on
that CPU. Measured in the lab VM (Debian 6.1.0-57, QEMU TCG, 2 vCPUs; the
macvlan UDP flood of benchmarks/bench_overhead.py with no probes at all):

- a CPU-bound process of policy SCHED_OTHER beside the flood cut it to 1/5-1/10;
- the same process at nice 19 cut it as much;
- the same process at SCHED_IDLE cost it nothing measurable;
- 10 MB/s of page-cache writes in 256 KiB bursts (what the spool writes at that rate) cost nothing measurable.

So the drain runs at SCHED_IDLE while it keeps up: a task of any other policy
that wakes on its CPU preempts it at once ("Idle tasks are by definition
preempted by non-idle tasks": ``check_preempt_wakeup`` in kernel/sched/fair.c,
6.1; renamed ``check_preempt_wakeup_fair`` in later kernels). SCHED_IDLE still
gets CPU on a busy machine, but little (load weight ``WEIGHT_IDLEPRIO`` = 3,
against 1024 at nice 0: kernel/sched/sched.h), and under a flood that keeps
every CPU busy it may get none: a drain that only watched the ring buffer
itself lost 38 % of the events in the lab (2026-12-04). So a guard process
(probes/drainguard.py) watches the ring buffer's positions and sets the
thread to SCHED_OTHER when the backlog reaches half the ring buffer; a drain
also does so itself when it finds the ring buffer half full, and a drain that
finds it less than 1/8 full goes back to SCHED_IDLE. The thread goes idle only
once the guard is watching; if the guard cannot start, it stays at
SCHED_OTHER. Events the kernel still cannot reserve are counted as lost, as
always.

``normal``, the default, keeps the thread at SCHED_OTHER throughout. ``yield``
is experimental (``record --drain yield``): in the lab (2026-12-05) it cost as
much as ``normal`` under a flood that keeps the ring buffer filling, and lost
more events (README, Overhead).

``defer`` (:class:`DeferGate`) changes *when* the thread reads, not its
policy: records wait in the ring buffer while they keep arriving, and are
read once no record has arrived for :data:`QUIET_S`, or at once when the ring
buffer is half full (until it is below 1/8 again). A burst that fits in half
the ring buffer then costs the traffic only the kernel's reserve and submit:
no copy, no spool write, no wakeup of the drain thread while it lasts. In the
lab VM (2026-12-05) page-cache writes beside a probed flood cost it a third
of its rate (the spool's writes: README, Overhead), while a ring buffer left
unread cost nothing measurable. The price is kernel memory: the ring buffer
must hold the burst (``--ringbuf-pages``), and traffic that never pauses is
drained at half full, as ``normal`` drains it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from .ringread import SLOT

DRAIN_CHOICES = ("normal", "yield", "defer")
#: ``defer``: seconds with no new record in the ring buffer after which what waits there is read.
QUIET_S = 0.2
#: A drain that finds the ring buffer at least this full (fraction of its size) switches to SCHED_OTHER.
HIGH_WATER = 1 / 2
#: A drain that finds it less full than this switches (back) to SCHED_IDLE.
LOW_WATER = 1 / 8


class DrainScheduler:
    """Switches the calling thread between SCHED_IDLE and SCHED_OTHER by the ring buffer's backlog.

    Args:
        policy: ``yield`` (SCHED_IDLE while the drain keeps up) or ``normal`` (never switch).
        ring_bytes: the ring buffer's data size in bytes.
        guard: called with the drain thread's tid, returns a started guard (an object with
            ``ready() -> bool | None``, ``stop() -> int`` and ``error``, as
            :class:`probes.drainguard.GuardProcess`); may raise OSError. Without one,
            ``yield`` stays at SCHED_OTHER.
        setter: ``os.sched_setscheduler`` (tests replace it); called with pid 0, the calling thread.
        getter: ``os.sched_getscheduler`` (tests replace it): the guard changes the policy behind
            the drain's back, so each update reads it.
        progress: callable taking one line; says once why the thread stays at SCHED_OTHER.

    Attributes:
        idle: whether the thread was at SCHED_IDLE at the last update.
        boosts: times a drain that found the ring buffer half full switched to SCHED_OTHER itself.
        guard_boosts: times the guard did (known after ``finish``).

    Raises:
        ValueError: ``policy`` is not one of :data:`DRAIN_CHOICES`.
    """

    def __init__(self, policy: str, ring_bytes: int, guard: Callable | None = None,
                 setter: Callable | None = None, getter: Callable | None = None,
                 progress: Callable[[str], None] = lambda m: None):
        if policy not in DRAIN_CHOICES:
            raise ValueError(f"drain must be one of {', '.join(DRAIN_CHOICES)}, got {policy!r}")
        self.policy = policy
        self.ring_bytes = ring_bytes
        self._spawn = guard
        self._set = setter if setter is not None else getattr(os, "sched_setscheduler", None)
        self._get = getter if getter is not None else getattr(os, "sched_getscheduler", None)
        self.progress = progress
        self.idle = False
        self.boosts = 0
        self.guard_boosts = 0
        self._guard = None
        self._armed = False
        self._broken = policy != "yield" or self._set is None or self._get is None or not hasattr(os, "SCHED_IDLE")

    @property
    def active(self) -> bool:
        """Whether :meth:`update` can still switch anything (False under ``normal``, or once given up)."""
        return not self._broken

    def _give_up(self, why: str) -> None:
        self._broken = True
        self.progress(f"drain: {why}; the drain thread stays at the normal policy")

    def _switch(self, idle: bool) -> None:
        try:
            self._set(0, os.SCHED_IDLE if idle else os.SCHED_OTHER, os.sched_param(0))
        except OSError as err:  # a seccomp profile or an LSM may refuse it: stay as we are
            self._give_up(f"cannot change the drain thread's scheduling policy ({err})")
            return
        self.idle = idle

    def start(self) -> None:
        """Called once from the drain thread before its first drain: starts the guard under ``yield``."""
        if self._broken:
            return
        if self._spawn is None:
            self._give_up("no guard process for this ring buffer")
            return
        try:
            self._guard = self._spawn(threading.get_native_id())
        except OSError as err:
            self._give_up(f"cannot start the guard process ({err})")

    def update(self, backlog_bytes: int) -> None:
        """Called before each drain with the bytes waiting in the ring buffer."""
        if self._broken:
            return
        if not self._armed:
            state = self._guard.ready()
            if state is None:
                self._give_up(f"the guard process failed: {self._guard.error}")
                return
            self._armed = state
            if not state:
                return  # idle only once something watches the ring buffer while the thread starves
        self.idle = self._get(0) == os.SCHED_IDLE
        if self.idle and backlog_bytes >= self.ring_bytes * HIGH_WATER:
            self._switch(False)
            if not self.idle:
                self.boosts += 1
        elif not self.idle and backlog_bytes < self.ring_bytes * LOW_WATER:
            self._switch(True)

    def finish(self) -> None:
        """Stop the guard; back to SCHED_OTHER for the last drains after the probes are detached."""
        if self._guard is not None:
            self.guard_boosts = self._guard.stop()
            self._guard = None
        if self._armed and not self._broken:
            self._switch(False)


class DeferGate:
    """``--drain defer``: whether the drain thread reads the ring buffer now, from its positions.

    Records wait in the ring buffer while the producer position keeps moving.
    :meth:`due` says yes when (a) the backlog is at least :data:`HIGH_WATER` of
    the ring buffer (it then stays yes until a call finds the backlog below
    :data:`LOW_WATER`: the reader catches up as ``normal`` would), or (b)
    something waits and the producer position has not moved for ``quiet_s``
    seconds (traffic paused: the reader empties the ring buffer).

    Args:
        ring_bytes: the ring buffer's data size in bytes.
        quiet_s: seconds without a new record before a pause counts (default :data:`QUIET_S`).
        clock: monotonic seconds (tests replace it).

    Attributes:
        catch_ups: times a half-full ring buffer made the reader drain while records kept arriving.
        pauses: times a pause in the traffic let the reader drain.
    """

    def __init__(self, ring_bytes: int, quiet_s: float = QUIET_S, clock: Callable[[], float] = time.monotonic):
        if ring_bytes <= 0 or quiet_s < 0:
            raise ValueError("ring_bytes must be > 0 and quiet_s >= 0")
        self.ring_bytes = ring_bytes
        self.quiet_s = quiet_s
        self._clock = clock
        self._prod: int | None = None
        self._moved = clock()
        self._catching_up = False
        self._in_pause = False
        self.catch_ups = 0
        self.pauses = 0

    def due(self, consumer: int, producer: int) -> bool:
        """Whether to drain now, given the ring buffer's positions (bytes, as
        :meth:`probes.ringread.RingReader.positions` returns them)."""
        now = self._clock()
        if producer != self._prod:
            self._prod, self._moved = producer, now
            self._in_pause = False
        backlog = producer - consumer
        if not self._catching_up and backlog >= self.ring_bytes * HIGH_WATER:
            self._catching_up = True
            self.catch_ups += 1
        elif self._catching_up and backlog < self.ring_bytes * LOW_WATER:
            self._catching_up = False
        if self._catching_up:
            return True
        if backlog > 0 and now - self._moved >= self.quiet_s:
            if not self._in_pause:
                self._in_pause = True
                self.pauses += 1
            return True
        return False


def defer_gate(policy: str, ring_bytes: int, mmap_reader: bool,
               progress: Callable[[str], None] = lambda m: None) -> DeferGate | None:
    """The gate for ``policy`` (``defer``), or None for the other policies.

    ``mmap_reader``: whether the ring buffer is read through its mapping
    (:mod:`probes.ringread`); bcc's per-event callback cannot leave records
    waiting, so without it ``defer`` drains as ``normal`` (one progress line says so).
    """
    if policy != "defer":
        return None
    if not mmap_reader:
        progress("drain: defer needs the mmap'd ring buffer reader; draining as normal")
        return None
    gate = DeferGate(ring_bytes)
    progress(f"drain: defer: events wait in the ring buffer until none arrives for {gate.quiet_s:g} s, or until "
             f"it is half full ({ring_bytes >> 20} MiB: about {ring_bytes // SLOT // 2:,} events)")
    return gate
