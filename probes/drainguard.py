"""A watchman process that lifts a starved SCHED_IDLE drain thread when the ring buffer fills.

Under ``record --drain yield`` the thread that drains the ring buffer runs at
SCHED_IDLE (probes/drainsched.py). Under a flood that keeps every CPU busy it
may get no CPU at all, so it can never see that the ring buffer is filling
and switch itself back: measured in the lab VM (Debian 6.1.0-57, QEMU TCG,
2 vCPUs, the macvlan UDP flood of benchmarks/bench_overhead.py, 67 fentry
functions, 2026-12-04), such a drain lost 513,584 of 1,364,355 events (38 %)
where a SCHED_OTHER drain lost 123.

The guard is a separate process at the normal policy: it sleeps most of the
time, and a sleeper that wakes is scheduled promptly. Every ``interval`` seconds
it reads the ring buffer's consumer and producer positions (read-only mmaps of
the map's first two pages, kernel/bpf/ringbuf.c ``ringbuf_map_mmap_kern``,
5.8+: a read-only mapping is allowed at any offset) and, when the backlog is at
least ``high_water`` of the ring buffer and the drain thread is at SCHED_IDLE,
sets that thread to SCHED_OTHER (``sched_setscheduler(2)`` on its tid; the
thread switches itself back once it has caught up). A thread inside Python
cannot do this for another: the starved thread may hold the GIL.

Protocol (the parent is ``DrainScheduler``): argv is ``FD RING_BYTES TID
INTERVAL HIGH_WATER``; the guard writes ``ready`` once mapped, then watches
until its stdin reaches end of file (the parent closed it, or died), then
writes ``boosts N`` and exits. It imports only the standard library, so it
starts fast.
"""

from __future__ import annotations

import mmap
import os
import re
import select
import struct
import subprocess
import sys
from typing import Callable

#: Seconds between two looks at the ring buffer: at the 4 MiB default and ~25,000
#: events/s (48 bytes each) half of it fills in about 1.7 s, so 0.05 s is ample.
INTERVAL_S = 0.05


def watch(backlog: Callable[[], int], stopped: Callable[[float], bool], threshold: int,
          is_idle: Callable[[], bool], boost: Callable[[], None], interval: float = INTERVAL_S) -> int:
    """The guard's loop: boost the drain thread whenever the backlog reaches ``threshold`` bytes.

    Args:
        backlog: bytes waiting in the ring buffer (producer - consumer position).
        stopped: waits up to its argument in seconds; True once the guard must stop.
        threshold: backlog in bytes at or above which an idle drain is boosted.
        is_idle: whether the drain thread is at SCHED_IDLE now.
        boost: sets the drain thread to SCHED_OTHER.

    Returns:
        how many times it boosted the thread.
    """
    boosts = 0
    while not stopped(interval):
        if backlog() < threshold:
            continue
        try:
            if not is_idle():
                continue
            boost()
        except (ProcessLookupError, PermissionError):
            break  # the thread is gone (or not ours to change): nothing left to guard
        boosts += 1
    return boosts


def _stdin_closed(timeout: float) -> bool:
    ready, _, _ = select.select([sys.stdin.buffer], [], [], timeout)
    return bool(ready) and not os.read(sys.stdin.fileno(), 4096)


def main(argv: list[str]) -> int:
    """Entry point of the guard process (see the module docstring for the protocol)."""
    fd, ring_bytes, tid = int(argv[0]), int(argv[1]), int(argv[2])
    interval, high = float(argv[3]), float(argv[4])
    parent = os.getppid()
    try:
        cons = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        prod = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=mmap.PAGESIZE)
    except (OSError, ValueError) as err:
        print(f"error cannot map the ring buffer: {err}", flush=True)
        return 1
    os.close(fd)  # the mappings keep the map alive for as long as the guard needs it

    def backlog() -> int:
        return struct.unpack_from("<Q", prod, 0)[0] - struct.unpack_from("<Q", cons, 0)[0]

    def is_idle() -> bool:
        # the tid is checked against the parent's threads, so a reused tid is never touched
        if os.getppid() != parent or not os.path.exists(f"/proc/{parent}/task/{tid}"):
            raise ProcessLookupError(tid)
        return os.sched_getscheduler(tid) == os.SCHED_IDLE

    def boost() -> None:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))

    print("ready", flush=True)
    boosts = watch(backlog, _stdin_closed, int(ring_bytes * high), is_idle, boost, interval)
    print(f"boosts {boosts}", flush=True)
    return 0


class GuardProcess:
    """Parent side: start the guard on a ring buffer map and a thread; ask whether it is ready; stop it.

    Args:
        map_fd: the ring buffer map's fd (inherited by the guard at the same number).
        ring_bytes: the ring buffer's data size in bytes.
        tid: the drain thread's kernel thread id (``threading.get_native_id()``).
        high_water: fraction of ``ring_bytes`` at which the guard boosts the thread.

    Raises:
        OSError: the process cannot be started.
    """

    def __init__(self, map_fd: int, ring_bytes: int, tid: int, high_water: float,
                 interval: float = INTERVAL_S):
        from . import runstate  # noqa: PLC0415  (the guard process itself never imports it)

        self._runstate = runstate
        # a session of its own: a terminal's Ctrl-C reaches the recorder, which stops it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callpath.probes.drainguard", str(map_fd), str(ring_bytes), str(tid),
             str(interval), str(high_water)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(map_fd,), start_new_session=True,
            bufsize=0)  # unbuffered: ready() reads one line, communicate() in stop() the rest
        runstate.register("pid", str(self.proc.pid))  # swept after a SIGKILL (it also exits on end of input)
        self._ready: bool | None = False
        self.error = ""

    def ready(self) -> bool | None:
        """True once the guard watches, False while it starts, None if it failed (see ``error``)."""
        if self._ready is False:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0)
            if readable:
                line = self.proc.stdout.readline().decode(errors="replace").strip()
                self._ready = True if line == "ready" else None
                if self._ready is None:
                    self.error = line.removeprefix("error ") or f"it exited (status {self.proc.poll()})"
        return self._ready

    def stop(self, timeout: float = 2.0) -> int:
        """End the guard (end of its input; killed after ``timeout`` s); returns the boosts it made (0 if it did not say)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self._runstate.unregister("pid", str(self.proc.pid))
        found = re.search(rb"^boosts (\d+)$", out or b"", re.MULTILINE)
        return int(found[1]) if found else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
