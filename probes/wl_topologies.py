"""The built-in workload topologies (veth, macvlan, ipvlan) and how one run executes.

See :mod:`probes.workload` for what each sends.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from .kernel import module_status
from .wl_netns import NetnsRun, _inside_netns, _netns_dir_restored
from .wl_signals import _signal_handlers, _signals_deferred
from .wl_traffic import _ETH_P_ARP, TrafficMixin, _ArpReceiver
from .wl_types import WorkloadError, WorkloadResult


class _Run(TrafficMixin, NetnsRun):
    """One run: namespaces and links (:class:`NetnsRun`) plus traffic (:class:`TrafficMixin`)."""


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

