"""Benchmark: `callpath record`'s peak memory does not grow with the run's length.

In ONE lab VM boot (or on this machine when it has kprobes), a steady UDP flood
runs through a veth pair between two network namespaces (made with pyroute2,
198.51.100.0/24, rate limited to what a TCG guest sustains), and
``callpath record specs/veth-macvlan-notes.md --duration D`` runs once per
duration while it flows. For each run it prints the events recorded, events
lost, the child's peak RSS (``ru_maxrss`` from ``os.wait4``: includes the bcc
compile; the largest of it and its own children, the trace converter among them)
and the most RSS seen while recording (``VmRSS`` of ``callpath record`` plus its
children, the converter process, polled every 0.5 s between the "recording for"
and "writing the rest" progress lines: the event path alone), each as a ratio
to the first (shortest) run::

    python benchmarks/bench_memory.py            # 60 s and 600 s (about 15 minutes under TCG)
    python benchmarks/bench_memory.py --short    # 20 s and 60 s (a quick check)
    python benchmarks/bench_memory.py --kernel 6.1.0-56-amd64   # pick the lab kernel
    python benchmarks/bench_memory.py --durations 60 600 --aggregate   # add --aggregate runs

The issue's goal: the long run's peak within 10% of the short run's.
Wrap lab runs in ``flock /tmp/callpath-lab.lock`` (one lab VM at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "veth-macvlan-notes.md"
PORT = 47031
A_ADDR, B_ADDR = "198.51.100.1", "198.51.100.2"
PAYLOAD = b"callpath memory benchmark ".ljust(64, b".")


@contextlib.contextmanager
def veth_pair(progress=print):
    """A veth pair between two namespaces; yields ``(sender, receiver)`` UDP sockets; removes everything."""
    from callpath.probes.wl_netns import _netns_dir_restored
    from callpath.probes.wl_signals import _signal_handlers
    from callpath.probes.wl_topologies import VethWorkload, _Run

    with _netns_dir_restored(), _signal_handlers([]):
        run = _Run(VethWorkload(), 1, lambda p: progress(str(p)))
        try:
            ns_a, ns_b = run.netns("a"), run.netns("b")
            run.add_link(ns_a, "veth0", "veth", peer=("veth1", ns_b))
            run.configure(ns_a, "veth0", A_ADDR, 24, "198.51.100.255")
            run.configure(ns_b, "veth1", B_ADDR, 24, "198.51.100.255")
            run.wait_up((ns_a, "veth0"), (ns_b, "veth1"))
            receiver = run.socket(ns_b, socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind(("0.0.0.0", PORT))
            sender = run.socket(ns_a, socket.AF_INET, socket.SOCK_DGRAM)
            sender.connect((B_ADDR, PORT))
            yield sender, receiver
        finally:
            problems = run.cleanup()
            if problems:
                print("bench: cleanup incomplete: " + "; ".join(problems), file=sys.stderr)


def _send_forever(fd: int, rate: int) -> None:
    """Child: send ``rate`` datagrams per second in 10 ms slices until killed."""
    sock = socket.socket(fileno=fd)
    per_tick, tick = max(1, rate // 100), 0.01
    t_next = time.monotonic()
    while True:
        for _ in range(per_tick):
            with contextlib.suppress(OSError):
                sock.send(PAYLOAD)
        t_next += tick
        time.sleep(max(0.0, t_next - time.monotonic()))


def _recv_forever(fd: int) -> None:
    """Child: drain the receiving socket until killed."""
    sock = socket.socket(fileno=fd)
    buf = bytearray(2048)
    while True:
        sock.recv_into(buf)


def _tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` plus its children's (the trace converter process), KiB."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in task.read_text().split()]
        except (OSError, ValueError):
            pass
    return _vm_rss_kib(pid) + sum(_vm_rss_kib(k) for k in kids)


def _vm_rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def measure(duration: float, out: Path, aggregate: bool) -> dict:
    """One ``callpath record`` child: peak RSS (KiB), RSS while recording, events, lost, seconds."""
    argv = [sys.executable, "-u", "-m", "callpath", "record", str(SPEC), "--out", str(out), "--duration",
            str(duration), "--where", "bench_memory"] + (["--aggregate"] if aggregate else [])
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    state = {"recording": False, "rss": 0, "samples": 0}

    def follow():
        for line in proc.stderr:
            print("  " + line.rstrip(), flush=True)
            if "recording for" in line:
                state["recording"] = True
            elif "writing the rest" in line:
                state["recording"] = False

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    while True:  # reap it ourselves: os.wait4 gives the child's own rusage (Popen.poll would discard it)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if state["recording"]:
            state["rss"] = max(state["rss"], _tree_rss_kib(proc.pid))
            state["samples"] += 1
        time.sleep(0.5)
    rc = proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    peak = usage.ru_maxrss  # KiB on Linux
    row = {"duration": duration, "aggregate": aggregate, "exit": rc, "peak_kib": peak,
           "recording_rss_kib": state["rss"], "rss_samples": state["samples"], "wall_s": time.monotonic() - t0}
    if out.exists():
        from callpath.analysis.trace import read_meta

        meta = read_meta(out)
        row.update(events=meta.get("events", 0), lost=meta.get("lost", 0), file_mib=out.stat().st_size / 2**20)
        out.unlink()
        out.with_suffix(".meta.json").unlink(missing_ok=True)
    return row


def inside(durations: list[float], rate: int, aggregate: bool, work: Path) -> list[dict]:
    """Flood the veth pair and run one recording per duration (and per mode); returns the rows."""
    rows = []
    with veth_pair() as (sender, receiver):
        me = str(Path(__file__).resolve())
        rfd, sfd = receiver.fileno(), sender.fileno()
        kids = [subprocess.Popen([sys.executable, "-u", me, "recv", str(rfd)], pass_fds=[rfd]),
                subprocess.Popen([sys.executable, "-u", me, "send", str(sfd), str(rate)], pass_fds=[sfd])]
        try:
            print(f"bench: UDP flood {A_ADDR} -> {B_ADDR}:{PORT}, {rate} datagrams/s", flush=True)
            for agg in ([False, True] if aggregate else [False]):
                for d in durations:
                    print(f"bench: callpath record --duration {d:g}{' --aggregate' if agg else ''}", flush=True)
                    rows.append(measure(d, work / f"trace-{d:g}{'-agg' if agg else ''}.parquet", agg))
        finally:
            for k in kids:
                k.kill()
                k.wait()
    return rows


def table(rows: list[dict]) -> str:
    """The result table; ratios against the first run of the same mode."""
    out = ["| mode | duration s | events | lost | peak RSS MiB | ratio | RSS while recording MiB | ratio | exit |",
           "|---|---|---|---|---|---|---|---|---|"]
    first: dict[bool, dict] = {}
    for r in rows:
        base = first.setdefault(r["aggregate"], r)
        ratio = r["peak_kib"] / base["peak_kib"] if base["peak_kib"] else 0
        rratio = r["recording_rss_kib"] / base["recording_rss_kib"] if base["recording_rss_kib"] else 0
        out.append(f"| {'aggregate' if r['aggregate'] else 'events'} | {r['duration']:g} | {r.get('events', '-')} | "
                   f"{r.get('lost', '-')} | {r['peak_kib'] / 1024:.1f} | {ratio:.3f} | "
                   f"{r['recording_rss_kib'] / 1024:.1f} | {rratio:.3f} | {r['exit']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="20 s and 60 s instead of 60 s and 600 s")
    ap.add_argument("--durations", type=float, nargs="+", metavar="S", help="durations to record (seconds)")
    ap.add_argument("--rate", type=int, default=2000, help="datagrams per second (default 2000)")
    ap.add_argument("--aggregate", action="store_true", help="also run each duration with --aggregate")
    ap.add_argument("--kernel", metavar="RELEASE", help="lab kernel (default: newest installed with headers)")
    ap.add_argument("--inside", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    durations = args.durations or ([20.0, 60.0] if args.short else [60.0, 600.0])
    from callpath.probes import kernel

    if args.inside or kernel.has_kprobes():
        from callpath.probes import runstate

        work = Path(args.inside) if args.inside else runstate.make_temp_dir("bench")
        try:
            rows = inside(durations, args.rate, args.aggregate, work)
        finally:
            if not args.inside:
                runstate.remove_temp_dir(work)
        print(f"kernel {kernel.kernel_release()}, {SPEC.name}, UDP flood {args.rate}/s through veth")
        print(table(rows))
        if args.inside:
            (work / "rows.json").write_text(json.dumps(rows))
        return 0
    from inlab import run_inside_lab

    def inner(stage: Path) -> list[str]:
        return [sys.executable, "-u", str(Path(__file__).resolve()), "--inside", str(stage), "--rate", str(args.rate),
                "--durations", *map(str, durations)] + (["--aggregate"] if args.aggregate else [])

    timeout = 600 + sum(durations) * (2 if args.aggregate else 1) + 400 * len(durations)
    rc, _rows = run_inside_lab(inner, "rows.json", args.kernel, timeout_s=timeout)  # the guest printed the table
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        _send_forever(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "recv":
        _recv_forever(int(sys.argv[2]))
    else:
        sys.exit(main())
