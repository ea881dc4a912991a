"""Run-time statistics of every loaded BPF program, for the overhead benchmark's ``--bpf-stats``.

The kernel counts, per program, the runs and the nanoseconds spent in them
while run-time statistics are on (``BPF_ENABLE_STATS`` with
``BPF_STATS_RUN_TIME``, 5.8+: on as long as the returned fd is open, so the
setting goes back by itself when the process ends, unlike the
``kernel.bpf_stats_enabled`` sysctl that other tools share). A program's
counters show in the fdinfo of any fd of it (``run_time_ns``, ``run_cnt``:
kernel/bpf/syscall.c ``bpf_prog_show_fdinfo``); :func:`snapshot` opens every
loaded program by id, so callpath's programs and bpftrace's count alike.

The figures time the program bodies only (a tail-called program counts in its
caller's time): what a kprobe or a BPF trampoline costs around them is not in
them. The two clock reads per run make every program slower while they are on.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from callpath.probes.fentry import _bpf  # noqa: E402 - the one bpf(2) wrapper (raises FentryError, an OSError)

#: bpf(2) commands and BPF_STATS_RUN_TIME = 0: uapi/linux/bpf.h
_BPF_ENABLE_STATS = 32
_BPF_PROG_GET_NEXT_ID = 11
_BPF_PROG_GET_FD_BY_ID = 13
#: enum bpf_prog_type values (uapi/linux/bpf.h) of the programs a tracer attaches
PROG_TYPES = {2: "kprobe", 5: "tracepoint", 17: "raw_tracepoint", 26: "tracing"}


def enable_stats() -> int:
    """Turn BPF run-time statistics on; returns the fd that keeps them on (close it to turn them off).

    Raises:
        OSError: the kernel refused (before 5.8, or not root).
    """
    return _bpf(_BPF_ENABLE_STATS, (ctypes.c_uint32 * 2)(0, 0))  # enable_stats.type = BPF_STATS_RUN_TIME


def snapshot() -> dict[int, tuple[int, int, str]]:
    """``{prog_id: (run_time_ns, run_cnt, type)}`` of every loaded BPF program (root); type: a name of
    :data:`PROG_TYPES` or the number.

    Walks the kernel's program ids (``BPF_PROG_GET_NEXT_ID``), opens each
    (``BPF_PROG_GET_FD_BY_ID``) and reads its fdinfo: a program attached through
    a link may have no fd of its own left in the process that loaded it, and a
    link's fdinfo names the program without its counters.
    """
    out: dict[int, tuple[int, int]] = {}
    prog_id = 0
    while True:
        attr = (ctypes.c_uint32 * 3)(prog_id, 0, 0)  # start_id, next_id, open_flags
        try:
            _bpf(_BPF_PROG_GET_NEXT_ID, attr)
        except OSError:  # ENOENT: no more programs
            break
        prog_id = attr[1]
        try:
            fd = _bpf(_BPF_PROG_GET_FD_BY_ID, (ctypes.c_uint32 * 3)(prog_id, 0, 0))
        except OSError:  # unloaded meanwhile
            continue
        try:
            kv = dict(ln.split(":", 1) for ln in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if ":" in ln)
        except OSError:
            continue
        finally:
            os.close(fd)
        try:
            kind = int(kv.get("prog_type", -1))
            out[prog_id] = (int(kv.get("run_time_ns", 0)), int(kv.get("run_cnt", 0)), PROG_TYPES.get(kind, str(kind)))
        except ValueError:
            continue
    return out


def delta(before: dict, after: dict) -> dict:
    """Runs and ns spent between two snapshots, summed over programs, and per program type.

    Returns ``{"bpf_runs", "bpf_ns", "bpf_ns_per_run", "bpf_by_type": {type: [runs, ns_per_run]}}``
    (``bpf_ns_per_run`` None when nothing ran).
    """
    by: dict[str, list[int]] = {}
    for pid, (t1, c1, kind) in after.items():
        t0, c0, _ = before.get(pid, (0, 0, kind))
        if c1 - c0:
            acc = by.setdefault(kind, [0, 0])
            acc[0] += c1 - c0
            acc[1] += t1 - t0
    runs, ns = sum(v[0] for v in by.values()), sum(v[1] for v in by.values())
    return {"bpf_runs": runs, "bpf_ns": ns, "bpf_ns_per_run": round(ns / runs, 1) if runs else None,
            "bpf_by_type": {k: [r, round(t / r, 1)] for k, (r, t) in sorted(by.items())}}
