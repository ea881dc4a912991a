"""Built-in network workloads: private namespaces, virtual links, real traffic.

Each workload creates its own network namespaces and links with pyroute2,
sends real packets from Python sockets, counts what arrives at receiving
sockets inside the namespaces, and removes everything it created -- on
success, on exceptions, on KeyboardInterrupt and on SIGTERM/SIGHUP (which are
turned into :class:`WorkloadTerminated` while a workload runs, so that the
``finally`` cleanup executes).

This module is the public face; the code lives in four modules, one concern
each: :mod:`probes.wl_signals` (signal handling), :mod:`probes.wl_netns`
(namespaces, links, sockets inside them), :mod:`probes.wl_traffic` (senders
and receivers), :mod:`probes.wl_topologies` (the three topologies and how a
run executes); :mod:`probes.wl_types` holds the shared errors and results.

Workloads (see :func:`available_workloads`):

``veth``
    veth pair between namespaces ``a`` and ``b`` (198.51.100.0/24); UDP a->b
    and ICMP echo a->b through a raw socket.
``macvlan``
    veth ``lower0`` (namespace ``lower``) <-> ``peer0`` (namespace ``peer``);
    macvlans ``mv0``/``mv1`` in bridge mode on ``lower0``, created directly in
    namespaces ``m0``/``m1`` (192.0.2.0/24); unicast UDP m0->m1 (its first
    packet triggers an ARP broadcast), UDP broadcast from m0, UDP m0->peer.
``ipvlan``
    same shape with ipvlans ``ipv0``/``ipv1`` in L3 mode in namespaces
    ``i0``/``i1`` (203.0.113.0/24); UDP ipv0->ipv1 and ipv0->peer (no replies
    are expected in L3 mode).

Only documentation address ranges (RFC 5737) are used, and every interface
carrying them lives in a namespace created by the run, so no packet can
leave the run's namespaces.

Namespaces are named ``cp-<pid>-<run>-<role>`` (for example
``cp-4242-1-m0``), bind-mounted under ``/var/run/netns`` like
``ip netns add`` does; :func:`leftover_namespaces` lists them and
:func:`remove_leftover_namespaces` removes the ones whose process is gone.

Sockets are created inside a namespace by switching the *calling thread*
into it with ``setns(2)`` (through :func:`pyroute2.netns.setns`) for the
duration of one ``socket()`` call; the original namespace is restored in a
``finally`` block and signals are deferred during that critical section. A
socket keeps the namespace it was created in.

The signal handlers are fork-aware: pyroute2 forks short-lived helpers
(``netns.create()``, ``IPRoute(netns=...)``) and stops them with SIGTERM; a
child that inherited the handler dies as by default instead of raising into
the parent's code. Creating the first named namespace makes
``/var/run/netns`` a shared bind mount (as ``ip netns add`` does); when the
run made that mount and no namespace is left in it, the run unmounts it and
removes the directory it created, so the machine is left as found.
"""

from __future__ import annotations

# re-exported: the workload API and the internals its tests reach
from .kernel import module_status
from .wl_netns import (  # noqa: F401
    _NETNS_RUN_DIR,
    _inside_netns,
    _is_mountpoint,
    _netns_dir_restored,
    _netns_path,
    leftover_namespaces,
    remove_leftover_namespaces,
)
from .wl_signals import _signal_handlers, _signals_deferred  # noqa: F401
from .wl_topologies import (  # noqa: F401
    IpvlanWorkload,
    MacvlanWorkload,
    VethWorkload,
    Workload,
    available_workloads,
    run_workload,
)
from .wl_traffic import _checksum, _icmp_echo  # noqa: F401
from .wl_types import NS_PREFIX, PHASES, Progress, WorkloadError, WorkloadResult, WorkloadTerminated

__all__ = [
    "NS_PREFIX",
    "PHASES",
    "Progress",
    "Workload",
    "WorkloadError",
    "WorkloadResult",
    "WorkloadTerminated",
    "available_workloads",
    "leftover_namespaces",
    "module_status",
    "remove_leftover_namespaces",
    "run_workload",
]

