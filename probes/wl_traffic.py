"""Traffic of the workloads: UDP and ICMP senders, receivers that count what arrives.

Payloads carry a per-run marker so that only this run's packets are counted.
"""

from __future__ import annotations

import select
import socket
import struct
import time

_ETH_P_ARP = 0x0806
_PACKET_BROADCAST = 1
_ICMP_ECHO_REPLY = 0
_ICMP_ECHO_REQUEST = 8
_SETTLE_TIMEOUT_S = 1.0  # wait for in-flight datagrams after sending


class TrafficMixin:
    """Senders, receivers and flows of a run (mixed into the run object, which
    provides ``socket(ns, ...)``, ``marker``, ``icmp_id``, ``ns_base``, ``result``)."""

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

