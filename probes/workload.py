"""Built-in network workloads: private namespaces, virtual links, real traffic.

Each workload creates its own network namespaces and links with pyroute2,
sends real packets from Python sockets, counts what arrives at receiving
sockets inside the namespaces, and removes everything it created -- on
success, on exceptions, on KeyboardInterrupt and on SIGTERM/SIGHUP (which are
turned into :class:`WorkloadTerminated` while a workload runs, so that the
``finally`` cleanup executes).

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

import contextlib
import ctypes
import errno
import itertools
import os
import random
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pyroute2 import IPRoute

from .kernel import module_status
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

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

_NETNS_RUN_DIR = pr_netns.NETNS_RUN_DIR  # "/var/run/netns", as iproute2
_ETH_P_ARP = 0x0806
_PACKET_BROADCAST = 1
_ICMP_ECHO_REPLY = 0
_ICMP_ECHO_REQUEST = 8
_UP_TIMEOUT_S = 5.0  # wait for operstate UP (qdisc activated by linkwatch)
_SETTLE_TIMEOUT_S = 1.0  # wait for in-flight datagrams after sending
_RUN_COUNTER = itertools.count(1)
_RUN_COUNTER_LOCK = threading.Lock()


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


# --------------------------------------------------------------------------
# kernel modules
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# one run: everything it creates is recorded here and removed in cleanup()
# --------------------------------------------------------------------------


class _Run:
    def __init__(self, workload: "Workload", packets: int, progress: Callable) -> None:
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

    def udp_receiver(self, ns: str, port: int) -> "_UdpReceiver":
        sock = self.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("0.0.0.0", port))  # 0.0.0.0: also receives broadcasts
        sock.setblocking(False)
        return _UdpReceiver(sock)

    def udp_sender(self, ns: str, broadcast: bool = False) -> socket.socket:
        sock = self.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return sock

    # -- traffic ----------------------------------------------------------
    def udp_flow(self, label: str, sender: socket.socket, dst: tuple[str, int],
                 count: int, receivers: dict[str, "_Receiver"]) -> None:
        """Send ``count`` datagrams labelled ``label``; ``receivers`` maps a
        result label to a receiver that should see them. Receivers are
        drained while sending (bounded socket buffers) and after it."""
        payload_prefix = self.marker + label.encode() + b" "
        for receiver in receivers.values():
            receiver.expect(payload_prefix)
        sent, errors = 0, {}
        for seq in range(count):
            try:
                sender.sendto(payload_prefix + b"%06d" % seq, dst)
                sent += 1
            except OSError as exc:
                errors[exc.strerror] = errors.get(exc.strerror, 0) + 1
            for receiver in receivers.values():
                receiver.drain()
        self.result.sent[label] = sent
        if errors:
            self.result.notes.append(f"{label}: sendto errors {errors}")
        _settle(list(receivers.values()), target=sent)
        for key, receiver in receivers.items():
            self.result.received[key] = receiver.count

    def icmp_echo_flow(self, label: str, src_ns: str, dst_ns: str, dst: str,
                       count: int) -> None:
        """ICMP echo requests via a raw socket in ``src_ns``; counts echo
        replies there (``received[label]``) and requests seen by a raw
        socket in ``dst_ns`` (``received[label + " requests at <role>"]``)."""
        sender = self.socket(src_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sender.setblocking(False)
        seen = self.socket(dst_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        seen.setblocking(False)
        replies = _IcmpReceiver(sender, _ICMP_ECHO_REPLY, self.icmp_id)
        requests = _IcmpReceiver(seen, _ICMP_ECHO_REQUEST, self.icmp_id)
        sent = 0
        for seq in range(count):
            packet = _icmp_echo(self.icmp_id, seq & 0xFFFF, self.marker + label.encode())
            try:
                sender.sendto(packet, (dst, 0))
                sent += 1
            except OSError as exc:
                self.result.notes.append(f"{label}: sendto failed: {exc.strerror}")
            replies.drain()
            requests.drain()
        self.result.sent[label] = sent
        _settle([replies, requests], target=sent)
        role = dst_ns[len(self.ns_base):]
        self.result.received[label] = replies.count
        self.result.received[f"{label} requests at {role}"] = requests.count

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
        self.namespaces.clear()
        return problems


class _Receiver:
    count: int

    def drain(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def fileno(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class _UdpReceiver(_Receiver):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.prefix = b""
        self.count = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def expect(self, prefix: bytes) -> None:
        self.drain()
        self.prefix, self.count = prefix, 0

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            if self.prefix and data.startswith(self.prefix):
                self.count += 1


class _IcmpReceiver(_Receiver):
    def __init__(self, sock: socket.socket, icmp_type: int, ident: int) -> None:
        self.sock, self.icmp_type, self.ident = sock, icmp_type, ident
        self.count = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            if len(data) < 20:
                continue
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:ihl + 8]
            if len(icmp) == 8:
                itype, _code, _csum, ident, _seq = struct.unpack("!BBHHH", icmp)
                if itype == self.icmp_type and ident == self.ident:
                    self.count += 1


class _ArpReceiver(_Receiver):
    """Counts incoming broadcast ARP frames on one interface (AF_PACKET)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.count = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        while True:
            try:
                _data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            if addr[2] == _PACKET_BROADCAST:
                self.count += 1


def _settle(receivers: list[_Receiver], target: int) -> None:
    """Drain until every receiver has ``target`` packets or no packet has
    arrived for ``_SETTLE_TIMEOUT_S`` seconds."""
    quiet_until = time.monotonic() + _SETTLE_TIMEOUT_S
    while True:
        for receiver in receivers:
            receiver.drain()
        waiting = [r for r in receivers if r.count < target]
        remaining = quiet_until - time.monotonic()
        if not waiting or remaining <= 0:
            return
        ready, _, _ = select.select(waiting, [], [], remaining)
        if ready:
            quiet_until = time.monotonic() + _SETTLE_TIMEOUT_S


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmp_echo(ident: int, seq: int, payload: bytes) -> bytes:
    """ICMP echo request (type 8) with the Internet checksum filled in."""
    header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


# --------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------


class Workload:
    """A built-in workload.

    Attributes:
        name: registry key (``"veth"``...).
        description: one line.
        modules: kernel modules (link kinds) it needs, e.g.
            ``("veth", "macvlan")``.
    """

    name = ""
    description = ""
    modules: tuple[str, ...] = ()

    def missing_modules(self) -> list[str]:
        """Modules :func:`module_status` reports as ``"missing"``."""
        return [m for m in self.modules if module_status(m) == "missing"]

    def run(self, packets: int = 50, progress: Callable[[str], None] = lambda msg: None
            ) -> WorkloadResult:
        """Same as ``run_workload(self.name, packets, progress)``."""
        return _execute(self, packets, progress)

    def _body(self, run: _Run) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<workload {self.name}: {self.description}>"


def _set_gro(ns: str, ifname: str, enable: bool, run: "_Run") -> bool:
    """Switch generic receive offload (``rx-gro``, and ``rx-udp-gro-forwarding``)
    of ``ifname`` in ``ns`` with pyroute2's ethtool (``ethtool -K IF gro on``). Returns
    False, with a note in the result, when the kernel or pyroute2 refuses."""
    try:
        from pyroute2.ethtool import Ethtool

        with _inside_netns(ns):
            eth = Ethtool()  # its sockets belong to the namespace they are made in
        try:
            features = eth.get_features(ifname)
            # rx-udp-gro-forwarding too: veth hands a frame to NAPI only when
            # the sender has no TSO or the receiver takes UDP GRO forwarding
            # (veth_skb_is_eligible_for_gro(), drivers/net/veth.c)
            for name in ("rx-gro", "rx-udp-gro-forwarding"):
                if name in features.features:
                    features.features[name].enable = enable
            eth.set_features(ifname, features)
            now = eth.get_features(ifname).features["rx-gro"].enable
        finally:
            eth.close()
    except Exception as exc:  # noqa: BLE001 - optional step: noted, not fatal
        run.result.notes.append(f"could not set rx-gro on {ifname}: {exc!r}")
        return False
    if now != enable:
        run.result.notes.append(f"rx-gro on {ifname} stayed {'off' if enable else 'on'}")
        return False
    return True


class VethWorkload(Workload):
    name = "veth"
    description = ("veth pair between two namespaces: UDP and ICMP echo a->b, then UDP again "
                   "with GRO on the receiver (veth NAPI)")
    modules = ("veth",)

    A_ADDR, B_ADDR = "198.51.100.1", "198.51.100.2"
    UDP_PORT = 47001

    def _body(self, run: _Run) -> None:
        run.progress("creating namespaces", run.ns_base + "{a,b}")
        ns_a, ns_b = run.netns("a"), run.netns("b")
        run.progress("creating links", "veth0 (a) <-> veth1 (b)")
        run.add_link(ns_a, "veth0", "veth", peer=("veth1", ns_b))
        run.progress("configuring", f"{self.A_ADDR}/24, {self.B_ADDR}/24")
        run.configure(ns_a, "veth0", self.A_ADDR, 24, "198.51.100.255")
        run.configure(ns_b, "veth1", self.B_ADDR, 24, "198.51.100.255")
        run.wait_up((ns_a, "veth0"), (ns_b, "veth1"))
        run.describe(ns_a, "veth0")
        run.describe(ns_b, "veth1")
        receiver = run.udp_receiver(ns_b, self.UDP_PORT)
        sender = run.udp_sender(ns_a)
        run.progress("sending", f"{run.packets} UDP datagrams a->b")
        run.udp_flow("udp a->b", sender, (self.B_ADDR, self.UDP_PORT), run.packets,
                     {"udp a->b": receiver})
        run.progress("sending", f"{run.packets} ICMP echo requests a->b")
        run.icmp_echo_flow("icmp echo a->b", ns_a, ns_b, self.B_ADDR, run.packets)
        # With GRO on the receiving veth, veth turns on NAPI: frames go through
        # the peer's ptr_ring and veth_poll (drivers/net/veth.c, veth_set_features)
        # instead of __netif_rx -- the NAPI receive path of the documents.
        if _set_gro(ns_b, "veth1", True, run):
            run.progress("sending", f"{run.packets} UDP datagrams a->b with GRO on veth1 (NAPI: veth_poll)")
            run.udp_flow("udp a->b napi", sender, (self.B_ADDR, self.UDP_PORT), run.packets,
                         {"udp a->b napi": receiver})


class _LowerPeerWorkload(Workload):
    """lower0 (ns lower) <-> peer0 (ns peer), two upper links on lower0."""

    kind = ""
    uppers = ("", "")  # ifnames
    roles = ("", "")  # namespace roles of the uppers
    subnet = ""  # a.b.c.
    UNICAST_PORT, BROADCAST_PORT, PEER_PORT = 47011, 47012, 47013

    def _upper_kwargs(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def _setup(self, run: _Run) -> dict[str, str]:
        net = self.subnet
        roles = ("lower", "peer") + self.roles
        run.progress("creating namespaces", run.ns_base + "{" + ",".join(roles) + "}")
        ns = {role: run.netns(role) for role in roles}
        run.progress("creating links", "lower0 (lower) <-> peer0 (peer)")
        run.add_link(ns["lower"], "lower0", "veth", peer=("peer0", ns["peer"]))
        lower_idx = run.index(ns["lower"], "lower0")
        for ifname, role in zip(self.uppers, self.roles):
            run.progress("creating links", f"{self.kind} {ifname} on lower0 -> {role}")
            run.add_link(ns["lower"], ifname, self.kind, dest_ns=ns[role],
                         link=lower_idx, **self._upper_kwargs())
        run.progress("configuring", f"{net}0/24")
        self._configure_lower(run, ns)
        run.configure(ns["peer"], "peer0", net + "1", 24, net + "255")
        for i, (ifname, role) in enumerate(zip(self.uppers, self.roles)):
            run.configure(ns[role], ifname, f"{net}{10 + i}", 24, net + "255")
        run.wait_up((ns["lower"], "lower0"), (ns["peer"], "peer0"),
                    *((ns[r], i) for i, r in zip(self.uppers, self.roles)))
        run.describe(ns["lower"], "lower0")
        run.describe(ns["peer"], "peer0")
        for ifname, role in zip(self.uppers, self.roles):
            run.describe(ns[role], ifname)
        return ns

    def _configure_lower(self, run: _Run, ns: dict[str, str]) -> None:
        # lower0 gets an address of its own: for macvlan, so that frames to the
        # lower device itself exist (rx_handler returns RX_HANDLER_PASS); for
        # ipvlan L3, because the slaves' outbound packets are routed in the
        # lower device's namespace (oif lower0) and need a connected route
        run.configure(ns["lower"], "lower0", self.subnet + "2", 24, self.subnet + "255")

    #: a tap flavour created (and removed) on lower0 after the traffic, to
    #: exercise its link-creation path (``macvtap``/``ipvtap``); "" for none
    tap_kind = ""

    def _add_tap(self, run: _Run, ns: dict[str, str]) -> None:
        """Create a ``tap_kind`` link ``tap0`` on lower0 (rtnl_newlink -> *_newlink).

        Skipped with a note when the kernel lacks the link kind: the traffic
        part of the workload has already run and stays valid.
        """
        if not self.tap_kind:
            return
        run.progress("creating links", f"{self.tap_kind} tap0 on lower0 (link-creation path)")
        try:
            run.add_link(ns["lower"], "tap0", self.tap_kind, link=run.index(ns["lower"], "lower0"),
                         **self._upper_kwargs())
        except WorkloadError as err:
            run.result.notes.append(f"{self.tap_kind} link not created: {err}")
            return
        run.describe(ns["lower"], "tap0")


class MacvlanWorkload(_LowerPeerWorkload):
    name = "macvlan"
    description = ("macvlan bridge mode: UDP mv0->mv1, ARP and UDP broadcast, "
                   "UDP mv0->outside peer over veth lower0, UDP peer->mv0 and peer->lower0 "
                   "(rx_handler); then a macvtap link on lower0")
    modules = ("veth", "macvlan")
    kind = "macvlan"
    tap_kind = "macvtap"
    uppers = ("mv0", "mv1")
    roles = ("m0", "m1")
    subnet = "192.0.2."

    REVERSE_PORT = 47014

    def _upper_kwargs(self) -> dict:
        return {"macvlan_mode": "bridge"}

    def _body(self, run: _Run) -> None:
        net = self.subnet
        ns = self._setup(run)
        m1_unicast = run.udp_receiver(ns["m1"], self.UNICAST_PORT)
        m1_bcast = run.udp_receiver(ns["m1"], self.BROADCAST_PORT)
        peer_bcast = run.udp_receiver(ns["peer"], self.BROADCAST_PORT)
        peer_unicast = run.udp_receiver(ns["peer"], self.PEER_PORT)
        arp_sock = run.socket(ns["m1"], socket.AF_PACKET, socket.SOCK_RAW,
                              socket.htons(_ETH_P_ARP))
        arp_sock.bind(("mv1", _ETH_P_ARP))
        arp_sock.setblocking(False)
        arp_m1 = _ArpReceiver(arp_sock)
        sender = run.udp_sender(ns["m0"], broadcast=True)

        n = run.packets
        run.progress("sending", f"{n} UDP datagrams m0->m1 (first one resolves "
                                "the neighbour: ARP broadcast)")
        run.udp_flow("udp m0->m1", sender, (net + "11", self.UNICAST_PORT), n,
                     {"udp m0->m1": m1_unicast})
        n_bcast = min(n, 5)
        run.progress("sending", f"{n_bcast} UDP broadcasts m0->{net}255")
        run.udp_flow("udp broadcast m0", sender, (net + "255", self.BROADCAST_PORT),
                     n_bcast, {"udp broadcast m0 at m1": m1_bcast,
                               "udp broadcast m0 at peer": peer_bcast})
        run.progress("sending", f"{n} UDP datagrams m0->peer")
        run.udp_flow("udp m0->peer", sender, (net + "1", self.PEER_PORT), n,
                     {"udp m0->peer": peer_unicast})
        arp_m1.drain()
        run.result.received["arp broadcast at m1"] = arp_m1.count
        # receive side: frames arriving on lower0 pass macvlan_handle_frame
        # (the rx_handler): to a macvlan's MAC -> RX_HANDLER_ANOTHER, to
        # lower0's own -> RX_HANDLER_PASS
        m0_from_peer = run.udp_receiver(ns["m0"], self.REVERSE_PORT)
        lower_from_peer = run.udp_receiver(ns["lower"], self.REVERSE_PORT)
        peer_sender = run.udp_sender(ns["peer"])
        run.progress("sending", f"{n} UDP datagrams peer->m0 (rx_handler: to a macvlan)")
        run.udp_flow("udp peer->m0", peer_sender, (net + "10", self.REVERSE_PORT), n,
                     {"udp peer->m0": m0_from_peer})
        run.progress("sending", f"{n} UDP datagrams peer->lower0 (rx_handler: to the lower device)")
        run.udp_flow("udp peer->lower0", peer_sender, (net + "2", self.REVERSE_PORT), n,
                     {"udp peer->lower0": lower_from_peer})
        self._add_tap(run, ns)


class IpvlanWorkload(_LowerPeerWorkload):
    name = "ipvlan"
    description = ("ipvlan L3 mode: UDP ipv0->ipv1 and ipv0->outside peer "
                   "over veth lower0 (no replies expected); then an ipvtap link on lower0")
    modules = ("veth", "ipvlan")
    kind = "ipvlan"
    tap_kind = "ipvtap"
    uppers = ("ipv0", "ipv1")
    roles = ("i0", "i1")
    subnet = "203.0.113."
    IPVLAN_MODE_L3 = 1  # IPVLAN_MODE_L2 = 0, IPVLAN_MODE_L3 = 1, L3S = 2

    def _upper_kwargs(self) -> dict:
        return {"ipvlan_mode": self.IPVLAN_MODE_L3}

    def _body(self, run: _Run) -> None:
        net = self.subnet
        ns = self._setup(run)
        i1_unicast = run.udp_receiver(ns["i1"], self.UNICAST_PORT)
        peer_unicast = run.udp_receiver(ns["peer"], self.PEER_PORT)
        sender = run.udp_sender(ns["i0"])
        n = run.packets
        run.progress("sending", f"{n} UDP datagrams ipv0->ipv1")
        run.udp_flow("udp ipv0->ipv1", sender, (net + "11", self.UNICAST_PORT), n,
                     {"udp ipv0->ipv1": i1_unicast})
        run.progress("sending", f"{n} UDP datagrams ipv0->peer")
        run.udp_flow("udp ipv0->peer", sender, (net + "1", self.PEER_PORT), n,
                     {"udp ipv0->peer": peer_unicast})
        run.result.notes.append(
            "ipvlan L3: the peer cannot reach ipv0 (no ARP for slave addresses "
            "on lower0), so replies are neither sent nor expected")
        self._add_tap(run, ns)


_WORKLOADS: tuple[type[Workload], ...] = (VethWorkload, MacvlanWorkload, IpvlanWorkload)


def available_workloads() -> dict[str, Workload]:
    """Built-in workloads by name: ``"veth"``, ``"macvlan"``, ``"ipvlan"``
    (a new dict of new instances on every call)."""
    return {cls.name: cls() for cls in _WORKLOADS}


def run_workload(name: str, packets: int = 50,
                 progress: Callable[[str], None] = lambda msg: None) -> WorkloadResult:
    """Run workload ``name`` once and remove everything it created.

    Args:
        name: a key of :func:`available_workloads`.
        packets: datagrams (and ICMP echoes) per unicast flow, >= 1;
            broadcast flows send ``min(packets, 5)``.
        progress: called with a :class:`Progress` (a ``str``) at each phase
            of :data:`PHASES`; an exception it raises aborts the run (after
            cleanup) and propagates unchanged.

    Returns:
        :class:`WorkloadResult`.

    Raises:
        WorkloadError: unknown name, ``packets < 1``, unsupported link kind
            (e.g. ``"ipvlan: kernel does not support link kind 'ipvlan'
            (module not available; ...)"``), namespace/link creation or
            configuration failure, or an incomplete cleanup.
        KeyboardInterrupt: SIGINT (after cleanup).
        WorkloadTerminated: SIGTERM/SIGHUP (after cleanup).

    Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW). While it runs in
    the main thread, handlers for SIGINT/SIGTERM/SIGHUP are installed and
    the previous ones restored afterwards.
    """
    workloads = available_workloads()
    if name not in workloads:
        raise WorkloadError(
            f"unknown workload {name!r}; available: {', '.join(sorted(workloads))}")
    return _execute(workloads[name], packets, progress)


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


def _execute(workload: Workload, packets: int, progress: Callable) -> WorkloadResult:
    with _netns_dir_restored():
        return _execute_inner(workload, packets, progress)


def _execute_inner(workload: Workload, packets: int, progress: Callable) -> WorkloadResult:
    if not isinstance(packets, int) or packets < 1:
        raise WorkloadError(f"{workload.name}: packets must be an integer >= 1, got {packets!r}")
    start = time.monotonic()
    notes: list[str] = []
    with _signal_handlers(notes):
        run = _Run(workload, packets, progress)
        run.result.notes.extend(notes)
        in_flight: BaseException | None = None
        try:
            workload._body(run)
        except BaseException as exc:
            in_flight = exc
            raise
        finally:
            with _signals_deferred():
                progress_error = None
                try:
                    run.progress("cleanup", ", ".join(run.namespaces))
                except BaseException as exc:  # noqa: BLE001 - cleanup must run
                    progress_error = exc
                problems = run.cleanup()
                if problems:
                    message = f"{workload.name}: cleanup incomplete: {'; '.join(problems)}"
                    if in_flight is None:
                        raise WorkloadError(message)
                    in_flight.add_note(message)
                if progress_error is not None and in_flight is None:
                    raise progress_error
        run.result.duration_s = time.monotonic() - start
        run.progress("done", f"{run.result.duration_s:.2f}s")
        return run.result
