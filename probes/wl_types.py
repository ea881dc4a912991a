"""Shared types of the built-in workloads: errors, progress messages, results.

See :mod:`probes.workload` for the workloads themselves.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

#: Prefix of every namespace a workload creates.
NS_PREFIX = "cp-"

#: Phases reported through ``progress`` (``Progress.phase``), in order.
PHASES = (
    "creating namespaces",
    "creating links",
    "configuring",
    "sending",
    "cleanup",
    "done",
)


# --------------------------------------------------------------------------
# errors, result, progress
# --------------------------------------------------------------------------


class WorkloadError(RuntimeError):
    """A workload could not be set up or run (message says which and why).

    Raised for unknown workload names, invalid arguments, unsupported link
    kinds (missing kernel module), namespace/link creation failures and an
    incomplete cleanup. Cleanup has always been attempted when it is raised.
    """


class WorkloadTerminated(BaseException):
    """SIGTERM or SIGHUP arrived while a workload was running.

    A ``BaseException`` (like ``KeyboardInterrupt``, which SIGINT raises) so
    that ``except Exception`` does not swallow it. Raised after cleanup has
    run. ``signum`` is the signal number; a CLI should exit with
    ``128 + signum``.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


class Progress(str):
    """A progress message: ``"<workload>: <phase>[: <detail>]"``.

    It is a ``str`` (callbacks may just print it) with the attributes
    ``workload``, ``phase`` (one of :data:`PHASES`) and ``detail``.
    """

    workload: str
    phase: str
    detail: str

    def __new__(cls, workload: str, phase: str, detail: str = "") -> "Progress":
        text = f"{workload}: {phase}" + (f": {detail}" if detail else "")
        self = super().__new__(cls, text)
        self.workload = workload
        self.phase = phase
        self.detail = detail
        return self


@dataclass
class WorkloadResult:
    """What one workload run did.

    Attributes:
        name: workload name (``"veth"``, ``"macvlan"``, ``"ipvlan"``).
        sent: flow label -> number of packets the kernel accepted from
            ``sendto()`` (e.g. ``{"udp m0->m1": 50, "udp broadcast m0": 5}``).
        received: label -> number of matching packets seen by receiving
            sockets inside the namespaces (UDP datagrams carrying this run's
            payload marker, ICMP echo replies/requests with this run's
            identifier, incoming broadcast ARP frames).
        interfaces: ifname -> ``{"netns": str, "ifindex": int, "kind": str,
            "address": MAC str, "ipv4": "a.b.c.d/len" or None}`` plus
            ``"mode"`` for macvlan/ipvlan, as read back from the kernel
            after setup (ifindexes are per namespace).
        duration_s: wall-clock seconds from the start of setup to the end
            of cleanup.
        notes: human-readable remarks (send errors, expected losses, ...).
    """

    name: str
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    interfaces: dict[str, dict] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

