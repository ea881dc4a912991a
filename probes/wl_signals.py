"""Signal handling while a workload runs.

SIGINT becomes ``KeyboardInterrupt`` and SIGTERM/SIGHUP become
:class:`~probes.wl_types.WorkloadTerminated`, so that the run's ``finally``
cleanup executes; inside a critical section (a thread switched into another
network namespace) they are deferred and raised at its end. The handlers are
fork-aware: a child that pyroute2 forked and stops with SIGTERM dies as by
default instead of raising into the parent's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from .wl_types import WorkloadTerminated

# --------------------------------------------------------------------------
# signals: SIGINT -> KeyboardInterrupt, SIGTERM/SIGHUP -> WorkloadTerminated
# --------------------------------------------------------------------------


class _SignalGuard:
    """Signal handler state; only the main thread receives Python signals."""

    def __init__(self) -> None:
        self.installed = False
        self.owner_pid = 0  # process that installed the handlers
        self.depth = 0  # > 0: the main thread is in a critical section
        self.pending: int | None = None

    def handler(self, signum: int, frame) -> None:  # noqa: ARG002
        if os.getpid() != self.owner_pid:
            # A forked child inherited the handler (pyroute2 forks helpers
            # for netns.create() and IPRoute(netns=...), and stops them with
            # SIGTERM). Raising here would let the child escape the helper
            # and continue running the parent's code: die as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        if self.depth > 0:
            if self.pending is None:
                self.pending = signum
            return
        raise _exception_for(signum)

    def take_pending(self) -> int | None:
        signum, self.pending = self.pending, None
        return signum


_guard = _SignalGuard()
_HANDLED_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s
)


def _exception_for(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return WorkloadTerminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP exceptions until the block has finished.

    Used around setns() critical sections and cleanup. If the block fails
    the signal stays pending and is raised when the handlers are removed.
    """
    if not (_guard.installed and _in_main_thread()):
        yield
        return
    _guard.depth += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _guard.depth -= 1
        if _guard.depth == 0 and not failed and _guard.pending is not None:
            raise _exception_for(_guard.take_pending())


@contextlib.contextmanager
def _signal_handlers(notes: list[str]) -> Iterator[None]:
    """Install the handlers for the duration of a run (main thread only).

    Signals whose disposition is SIG_IGN stay ignored. Previous handlers
    are restored on exit; a signal that arrived while deferred is raised
    then, after cleanup.
    """
    if _guard.installed:  # nested run: outer run owns the handlers
        yield
        return
    if not _in_main_thread():
        notes.append(
            "signal handlers not installed (not in the main thread): "
            "SIGTERM would kill the process without cleanup"
        )
        yield
        return
    previous: dict[int, object] = {}
    _guard.owner_pid = os.getpid()  # before any handler can run
    try:
        for signum in _HANDLED_SIGNALS:
            old = signal.getsignal(signum)
            if old is signal.SIG_IGN:
                continue
            previous[signum] = old
            signal.signal(signum, _guard.handler)
        _guard.installed = True
        _guard.pending = None
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        _guard.installed = False
        _guard.depth = 0
        pending = _guard.take_pending()
        if pending is not None:
            raise _exception_for(pending)

