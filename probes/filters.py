"""In-kernel filters of a recording: ``--netns``, ``--dev`` and ``--pid``.

The BPF program compares each event's facts with these constants (compiled in
as cflags) *before* it reserves a ring-buffer record, so unrelated traffic on
a busy host costs a comparison, not a record:

* netns: the inode of the network namespace of the event's device
  (``skb->dev->nd_net.net->ns.inum``, or the ``struct net_device *`` argument's);
* ifindex: that device's ifindex; an ifindex is only unique within one netns,
  so ``--dev`` always also sets the netns (the one the name was resolved in);
* tgid: the process id of the current task (``bpf_get_current_pid_tgid() >> 32``).
  Packets handled in softirq run in whatever task was interrupted, so ``--pid``
  suits process-context paths (socket sends, rtnetlink), not receive paths.

A function without an skb or net_device argument (``rtnl_newlink``) has no
device to judge by: it inherits the verdict of its thread's nearest enclosing
probed frame, and is kept when there is none (bpf/callpath_stack.h ``stack_entry``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


class FilterError(ValueError):
    """A filter names a netns, device or process that does not exist; ``str()`` is one line."""


@dataclass(frozen=True)
class Filters:
    """Constants compiled into the BPF program; None: no filter on that fact.

    Attributes:
        netns: network namespace inode number.
        ifindex: interface index (within ``netns``).
        tgid: process id.
        labels: what the user gave, for the report (``{"dev": "eth0", ...}``).
    """

    netns: int | None = None
    ifindex: int | None = None
    tgid: int | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def active(self) -> bool:
        return any(v is not None for v in (self.netns, self.ifindex, self.tgid))

    def cflags(self) -> list[str]:
        """``-DCALLPATH_FILTER_*`` for bpf/callpath.bpf.c (0: off)."""
        return [f"-DCALLPATH_FILTER_NETNS={self.netns or 0}u", f"-DCALLPATH_FILTER_IFINDEX={self.ifindex or 0}",
                f"-DCALLPATH_FILTER_TGID={self.tgid or 0}u"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = dict(self.labels)
        return d

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.labels) or "none"


def _netns_file(netns: str) -> str:
    if "/" in netns:
        return netns
    if netns in (".", ".."):
        raise FilterError(f"--netns {netns!r}: not a namespace name")
    return os.path.join("/run/netns", netns)


def _ifindex(dev: str, netns_path: str | None) -> int:
    from pyroute2 import IPRoute  # noqa: PLC0415 - only when --dev is given

    try:
        with (IPRoute(netns=netns_path) if netns_path else IPRoute()) as ipr:
            found = ipr.link_lookup(ifname=dev)
    except Exception as err:  # noqa: BLE001 - pyroute2 raises several kinds
        raise FilterError(f"--dev {dev}: cannot look it up ({err})") from err
    if not found:
        where = f" in netns {netns_path}" if netns_path else ""
        raise FilterError(f"--dev {dev}: no such interface{where}")
    return int(found[0])


def resolve_filters(netns: str | None = None, dev: str | None = None, pid: int | str | None = None) -> Filters:
    """Turn the user's ``--netns``, ``--dev`` and ``--pid`` into :class:`Filters`.

    Args:
        netns: a name under /run/netns, a path (``/proc/PID/ns/net``) or an inode number.
        dev: an interface name, looked up with pyroute2 in ``netns`` (by name or path;
            an inode number cannot be entered) or else in the caller's netns.
        pid: a process id (must exist).

    Raises:
        FilterError: the namespace, interface or process does not exist.
    """
    labels = []
    inode = None
    ns_path = None
    if netns is not None:
        netns = str(netns)
        labels.append(("netns", netns))
        if netns.isdigit():
            inode = int(netns)
            if dev:
                raise FilterError("--dev needs --netns as a name or path (an inode cannot be entered)")
        else:
            ns_path = _netns_file(netns)
            try:
                inode = os.stat(ns_path).st_ino
            except OSError as err:
                raise FilterError(f"--netns {netns}: {err.strerror} ({ns_path})") from None
    ifindex = None
    if dev:
        labels.append(("dev", dev))
        ifindex = _ifindex(dev, ns_path)
        if inode is None:
            inode = os.stat("/proc/self/ns/net").st_ino
    tgid = None
    if pid is not None:
        try:
            tgid = int(pid)
        except ValueError:
            raise FilterError(f"--pid {pid!r}: not a number") from None
        if tgid <= 0 or not os.path.exists(f"/proc/{tgid}"):
            raise FilterError(f"--pid {pid}: no such process")
        labels.append(("pid", str(tgid)))
    return Filters(netns=inode, ifindex=ifindex, tgid=tgid, labels=tuple(labels))
