"""The UDP flood of the overhead benchmark: macvlan m0 -> macvlan m1, as fast as possible.

The topology is the built-in ``macvlan`` workload's (:class:`probes.wl_topologies.MacvlanWorkload`:
veth lower0/peer0, macvlans mv0 and mv1 in bridge mode on lower0, each in a
namespace of its own, 192.0.2.0/24), built once with pyroute2 and removed on
exit. Each flood runs in two child processes, so the recorder under test
never shares a Python interpreter (GIL) with the traffic:

* the sender (namespace m0, socket handed over as a file descriptor)
  ``send()``\\ s ``count`` datagrams of 64 bytes to mv1, then a few ``END``
  datagrams;
* the receiver (namespace m1) counts datagrams until ``END`` or 2 s without one.

Each prints one JSON line: sender ``{"sent", "errors", "t0", "t1"}``,
receiver ``{"received", "t_last"}`` (``CLOCK_MONOTONIC`` seconds, shared by
both). Run as a script only by :func:`flood` (``send FD COUNT`` / ``recv FD``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PORT = 47021
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module
END = b"END callpath overhead flood"
_PAYLOAD = b"callpath overhead flood ".ljust(64, b".")


@dataclass
class FloodResult:
    """One flood: datagrams sent/received and rates (per second of the sender's start)."""

    sent: int
    received: int
    errors: int
    send_s: float  # first send() to last send(), seconds
    recv_s: float  # first send() to last datagram received, seconds

    @property
    def sent_pps(self) -> float:
        return self.sent / self.send_s if self.send_s > 0 else 0.0

    @property
    def recv_pps(self) -> float:
        return self.received / self.recv_s if self.recv_s > 0 else 0.0


@contextlib.contextmanager
def macvlan_pair(progress=lambda m: None):
    """Build the macvlan topology; yield ``(sender_sock, receiver_sock)``; remove everything.

    Raises:
        probes.wl_types.WorkloadError: the topology cannot be built (root, modules).
    """
    from callpath.probes.wl_netns import _netns_dir_restored
    from callpath.probes.wl_signals import _signal_handlers
    from callpath.probes.wl_topologies import MacvlanWorkload, _Run

    wl = MacvlanWorkload()
    with _netns_dir_restored(), _signal_handlers([]):
        run = _Run(wl, 1, progress)
        try:
            ns = wl._setup(run)
            receiver = run.socket(ns["m1"], socket.AF_INET, socket.SOCK_DGRAM)
            with contextlib.suppress(OSError):  # root: past net.core.rmem_max
                receiver.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
            receiver.bind(("0.0.0.0", PORT))
            sender = run.socket(ns["m0"], socket.AF_INET, socket.SOCK_DGRAM)
            sender.connect((wl.subnet + "11", PORT))  # mv1's address (see MacvlanWorkload)
            yield sender, receiver
        finally:
            problems = run.cleanup()
            if problems:
                print("flood: cleanup incomplete: " + "; ".join(problems), file=sys.stderr)


def flood(sender: socket.socket, receiver: socket.socket, count: int, timeout_s: float = 600) -> FloodResult:
    """Send ``count`` datagrams from ``sender`` while ``receiver`` counts them (two child processes).

    Raises:
        RuntimeError: a child failed or printed no result.
    """
    me = str(Path(__file__).resolve())
    receiver.setblocking(False)  # drop what an earlier flood left (its extra END datagrams)
    with contextlib.suppress(BlockingIOError):
        while True:
            receiver.recv(2048)
    receiver.setblocking(True)
    rfd, sfd = receiver.fileno(), sender.fileno()
    recv = subprocess.Popen([sys.executable, "-u", me, "recv", str(rfd)], pass_fds=[rfd],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let the receiver block in recv()
        send = subprocess.run([sys.executable, "-u", me, "send", str(sfd), str(count)], pass_fds=[sfd],
                              stdout=subprocess.PIPE, text=True, timeout=timeout_s)
        out, _ = recv.communicate(timeout=timeout_s)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if send.returncode or recv.returncode:
        raise RuntimeError(f"flood child failed: sender {send.returncode}, receiver {recv.returncode}")
    s, r = json.loads(send.stdout), json.loads(out)
    return FloodResult(sent=s["sent"], received=r["received"], errors=s["errors"],
                       send_s=s["t1"] - s["t0"], recv_s=max(r["t_last"] - s["t0"], 0.0))


def _send(fd: int, count: int) -> dict:
    sock = socket.socket(fileno=fd)
    send, payload = sock.send, _PAYLOAD
    sent = errors = 0
    t0 = time.monotonic()
    for _ in range(count):
        try:
            send(payload)
            sent += 1
        except OSError:
            errors += 1
    t1 = time.monotonic()
    for _ in range(5):
        with contextlib.suppress(OSError):
            send(END)
        time.sleep(0.05)
    return {"sent": sent, "errors": errors, "t0": t0, "t1": t1}


def _recv(fd: int) -> dict:
    sock = socket.socket(fileno=fd)
    sock.settimeout(2.0)
    buf = bytearray(2048)
    recv_into, received, t_last = sock.recv_into, 0, 0.0
    while True:
        try:
            n = recv_into(buf)
        except TimeoutError:
            break
        if n == len(END) and buf[:n] == END:
            break
        received += 1
        t_last = time.monotonic()
    return {"received": received, "t_last": t_last}


if __name__ == "__main__":
    if sys.argv[1] == "send":
        print(json.dumps(_send(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps(_recv(int(sys.argv[2]))))
