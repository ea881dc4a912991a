"""Network-namespace plumbing of the workloads: namespaces, links, sockets inside them.

Namespaces are named ``cp-<pid>-<run>-<role>`` and bind-mounted under
``/var/run/netns`` like ``ip netns add`` does; each is registered with
:mod:`probes.runstate` before it is created (a later ``sweep`` removes it
after a SIGKILL). :class:`NetnsRun` records everything a run creates and
removes it in :meth:`NetnsRun.cleanup`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import random
import socket
import threading
import time
from typing import Callable, Iterator

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from . import runstate
from .kernel import module_status
from .wl_signals import _signals_deferred
from .wl_types import NS_PREFIX, Progress, WorkloadError, WorkloadResult

_NETNS_RUN_DIR = pr_netns.NETNS_RUN_DIR  # "/var/run/netns", as iproute2
_UP_TIMEOUT_S = 5.0  # wait for operstate UP (qdisc activated by linkwatch)
_RUN_COUNTER = itertools.count(1)
_RUN_COUNTER_LOCK = threading.Lock()

# --------------------------------------------------------------------------
# namespaces
# --------------------------------------------------------------------------


def _netns_path(name: str) -> str:
    return os.path.join(_NETNS_RUN_DIR, name)


def leftover_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Names of named network namespaces (``/var/run/netns``) starting with
    ``prefix``, sorted. Empty when the directory does not exist."""
    return sorted(n for n in pr_netns.listnetns() if n.startswith(prefix))


def _pid_of(name: str, prefix: str) -> int | None:
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftover_namespaces(
    prefix: str = NS_PREFIX, stale_only: bool = True
) -> list[str]:
    """Remove namespaces left behind (e.g. by a SIGKILLed run).

    With ``stale_only`` (default) only ``<prefix><pid>-...`` namespaces whose
    pid is no longer alive are removed, so concurrent runs are not
    disturbed. Returns the removed names; raises ``OSError`` if removal
    fails.
    """
    removed = []
    for name in leftover_namespaces(prefix):
        pid = _pid_of(name, prefix)
        if stale_only and (pid is None or _pid_alive(pid)):
            continue
        pr_netns.remove(name)
        removed.append(name)
    return removed


@contextlib.contextmanager
def _inside_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread in namespace ``name``.

    The thread's own namespace (``/proc/thread-self``, not ``/proc/self``,
    which is the main thread's) is saved and restored even on errors;
    signals are deferred for the whole block, so keep it short.
    """
    with _signals_deferred():
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                target = os.open(_netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise WorkloadError(f"network namespace {name!r} does not exist") from exc
            try:
                # int fd: pyroute2 never creates a namespace (flags unused)
                pr_netns.setns(target, flags=0)
            finally:
                os.close(target)
            try:
                yield
            finally:
                pr_netns.setns(orig, flags=0)
        finally:
            os.close(orig)


def _is_mountpoint(path: str) -> bool:
    """True when ``path`` is a mount point, bind mounts of the same filesystem
    included (``os.path.ismount`` misses those): read /proc/self/mountinfo."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            return any(line.split()[4] == real for line in fh if len(line.split()) > 4)
    except OSError:
        return os.path.ismount(path)


@contextlib.contextmanager
def _netns_dir_restored() -> Iterator[None]:
    """Undo the ``/var/run/netns`` bind mount (and directory) if this run made them."""
    existed = os.path.isdir(_NETNS_RUN_DIR)
    mounted = _is_mountpoint(_NETNS_RUN_DIR)
    try:
        yield
    finally:
        if not mounted and _is_mountpoint(_NETNS_RUN_DIR) and not os.listdir(_NETNS_RUN_DIR):
            libc = ctypes.CDLL(None, use_errno=True)
            while _is_mountpoint(_NETNS_RUN_DIR):  # "ip netns" may stack two mounts
                if libc.umount2(os.path.realpath(_NETNS_RUN_DIR).encode(), 2) != 0:  # MNT_DETACH
                    break
            if not existed and not _is_mountpoint(_NETNS_RUN_DIR):
                with contextlib.suppress(OSError):
                    os.rmdir(_NETNS_RUN_DIR)



class NetnsRun:
    """Everything one workload run creates: namespaces, links, sockets, netlink sockets."""

    def __init__(self, workload, packets: int, progress: Callable) -> None:
        self.workload = workload
        self.packets = packets
        self._progress = progress
        with _RUN_COUNTER_LOCK:
            self.run_no = next(_RUN_COUNTER)
        self.ns_base = f"{NS_PREFIX}{os.getpid()}-{self.run_no}-"
        self.namespaces: list[str] = []  # created or being created, in order
        self.links: list[tuple[str, str]] = []  # (netns, ifname), in order
        self.sockets: list[socket.socket] = []
        self.iprs: dict[str, IPRoute] = {}
        self.marker = b"callpath %d %d %08x " % (
            os.getpid(), self.run_no, random.getrandbits(32),
        )
        self.icmp_id = random.getrandbits(16)
        self.result = WorkloadResult(name=workload.name)

    # -- progress ---------------------------------------------------------
    def progress(self, phase: str, detail: str = "") -> None:
        self._progress(Progress(self.workload.name, phase, detail))

    # -- namespaces -------------------------------------------------------
    def netns(self, role: str) -> str:
        name = self.ns_base + role
        if os.path.lexists(_netns_path(name)):
            raise WorkloadError(
                f"{self.workload.name}: network namespace {name!r} already exists "
                "(leftover of an earlier process with the same pid? "
                "see remove_leftover_namespaces())"
            )
        self.namespaces.append(name)  # before creating: partial creation is cleaned
        runstate.register("netns", name)  # and swept after a SIGKILL
        try:
            pr_netns.create(name)
        except PermissionError as exc:
            raise WorkloadError(
                f"{self.workload.name}: cannot create network namespace {name!r}: "
                f"permission denied (needs root / CAP_SYS_ADMIN)"
            ) from exc
        except Exception as exc:
            raise WorkloadError(
                f"{self.workload.name}: cannot create network namespace {name!r}: {exc}"
            ) from exc
        if not os.path.lexists(_netns_path(name)):
            raise WorkloadError(
                f"{self.workload.name}: network namespace {name!r} was not created"
            )
        return name

    def ipr(self, ns: str) -> IPRoute:
        ipr = self.iprs.get(ns)
        if ipr is None:
            # flags=0: never create the namespace implicitly (default O_CREAT)
            ipr = IPRoute(netns=ns, flags=0, groups=0)
            self.iprs[ns] = ipr
        return ipr

    # -- links ------------------------------------------------------------
    def add_link(self, ns: str, ifname: str, kind: str, dest_ns: str | None = None,
                 peer: tuple[str, str] | None = None, **kwargs) -> None:
        """Create link ``ifname`` from namespace ``ns``; it lands in
        ``dest_ns`` (default ``ns``). ``peer`` = (ifname, netns) for veth."""
        request = dict(ifname=ifname, kind=kind, **kwargs)
        if dest_ns is not None and dest_ns != ns:
            request["net_ns_fd"] = dest_ns
        if peer is not None:
            request["peer"] = {"ifname": peer[0], "net_ns_fd": peer[1]}
        try:
            self.ipr(ns).link("add", **request)
        except NetlinkError as exc:
            name = self.workload.name
            if exc.code == errno.EOPNOTSUPP:
                status = module_status(kind)
                raise WorkloadError(
                    f"{name}: kernel does not support link kind {kind!r} "
                    f"(module not available; module_status({kind!r}) = {status!r})"
                ) from exc
            raise WorkloadError(
                f"{name}: cannot create {kind} link {ifname!r} in {dest_ns or ns}: "
                f"{os.strerror(exc.code)} (errno {exc.code})"
            ) from exc
        self.links.append((dest_ns or ns, ifname))
        if peer is not None:
            self.links.append((peer[1], peer[0]))

    def index(self, ns: str, ifname: str) -> int:
        found = self.ipr(ns).link_lookup(ifname=ifname)
        if not found:
            raise WorkloadError(f"{self.workload.name}: no interface {ifname!r} in {ns}")
        return found[0]

    def configure(self, ns: str, ifname: str, address: str | None = None,
                  prefixlen: int = 24, broadcast: str | None = None) -> int:
        """Set ``ifname`` up (after adding ``address``/``prefixlen``)."""
        ipr = self.ipr(ns)
        idx = self.index(ns, ifname)
        try:
            if address is not None:
                extra = {"broadcast": broadcast} if broadcast else {}
                ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, **extra)
            ipr.link("set", index=idx, state="up")
        except NetlinkError as exc:
            raise WorkloadError(
                f"{self.workload.name}: cannot configure {ifname} in {ns}: "
                f"{os.strerror(exc.code)} (errno {exc.code})"
            ) from exc
        return idx

    def wait_up(self, *where: tuple[str, str]) -> None:
        """Wait until each (netns, ifname) reports operstate UP, i.e. the
        kernel's linkwatch has activated its qdisc (packets sent before that
        can be dropped). Raises WorkloadError after a timeout."""
        deadline = time.monotonic() + _UP_TIMEOUT_S
        for ns, ifname in where:
            while True:
                msg = self.ipr(ns).link("get", index=self.index(ns, ifname))[0]
                if msg.get("operstate") == "UP":
                    break
                if time.monotonic() > deadline:
                    raise WorkloadError(
                        f"{self.workload.name}: {ifname} in {ns} not operationally up "
                        f"after {_UP_TIMEOUT_S:.0f}s (operstate {msg.get('operstate')})"
                    )
                time.sleep(0.01)

    def describe(self, ns: str, ifname: str) -> None:
        ipr = self.ipr(ns)
        idx = self.index(ns, ifname)
        msg = ipr.link("get", index=idx)[0]
        info = {
            "netns": ns,
            "ifindex": idx,
            "kind": msg.get(("linkinfo", "kind")),
            "address": msg.get("address"),
            "ipv4": None,
        }
        for key in ("macvlan_mode", "ipvlan_mode"):
            mode = msg.get(("linkinfo", "data", key))
            if mode is not None:
                info["mode"] = mode
        for addr in ipr.addr("dump", index=idx, family=socket.AF_INET):
            info["ipv4"] = f"{addr.get('address')}/{addr['prefixlen']}"
            break
        self.result.interfaces[ifname] = info

    # -- sockets ----------------------------------------------------------
    def socket(self, ns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
        with _inside_netns(ns):
            sock = socket.socket(family, type_, proto)
            self.sockets.append(sock)
        return sock

    # -- cleanup ----------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Close sockets, delete links, remove namespaces. Never raises;
        returns problems that may leave something behind."""
        problems: list[str] = []
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
        # Explicit deletion makes device teardown synchronous; removing the
        # namespaces would delete these virtual links anyway (asynchronously).
        for ns, ifname in reversed(self.links):
            try:
                ipr = self.ipr(ns)
                found = ipr.link_lookup(ifname=ifname)
                if found:
                    ipr.link("del", index=found[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # gone with its veth peer / lower
                    self.result.notes.append(f"cleanup: deleting {ifname} in {ns}: {exc}")
            except Exception as exc:  # noqa: BLE001 - namespace removal follows
                self.result.notes.append(f"cleanup: deleting {ifname} in {ns}: {exc!r}")
        self.links.clear()
        for ns, ipr in list(self.iprs.items()):
            try:
                ipr.close()
            except Exception as exc:  # noqa: BLE001
                self.result.notes.append(f"cleanup: closing netlink socket for {ns}: {exc!r}")
        self.iprs.clear()
        for name in reversed(self.namespaces):
            if not os.path.lexists(_netns_path(name)):
                continue
            try:
                pr_netns.remove(name)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"removing namespace {name}: {exc!r}")
        for name in self.namespaces:
            if os.path.lexists(_netns_path(name)):
                problems.append(f"namespace {name} still present")
            else:
                runstate.unregister("netns", name)
        self.namespaces.clear()
        return problems

