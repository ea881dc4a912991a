"""Benchmark: what one probe hit costs on this kernel, by mechanism and by what the program does.

A trigger benchmark in the manner of the kernel's BPF selftests (``bench
trig-kprobe``, ``trig-fentry``): one process calls ``getpgid(2)`` in a loop
while a program is attached to its syscall function (``__x64_sys_getpgid``),
and the time per call, minus the time per call with nothing attached, is the
cost of one hit (kprobe or fentry alone) or one call (a pair: kprobe+kretprobe,
fentry+fexit). Programs:

  empty   returns at once: the mechanism alone
  clock   one bpf_ktime_get_ns(): what callpath pays per hit for time stamps
  count   one per-CPU hash update, the body of bpftrace's ``@[probe] = count()``
  and the pieces of callpath's counting mode: bpf_get_current_pid_tgid, an 8-byte
  bpf_probe_read_kernel, per-thread state (432 bytes) in an LRU hash keyed by tid,
  in a per-CPU array, and in task storage (BPF_MAP_TYPE_TASK_STORAGE);
  and callpath's own program (bpf/callpath.bpf.c) with one fentry/fexit pair on
  the target, counting (``--aggregate``: one frame deep, one path) and streaming
  (one 40-byte ring-buffer record per hit into a 64 MiB ring buffer that holds
  every record of the row, so none is lost and nothing drains it meanwhile).

Pairs attach the same body at entry and at return. fentry/fexit programs are
loaded the way callpath loads them (probes/fentry.py). Where the running kernel
has no kprobes, the benchmark re-runs itself in a lab VM.

Example:
    flock /tmp/callpath-lab.lock python benchmarks/bench_probe_cost.py --kernel 6.1.0-57-amd64

Under QEMU TCG the figures are the emulator's, not a CPU's: what matters is
how the rows compare, e.g. a clock read against a whole kprobe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inlab import run_inside_lab, show  # noqa: E402

from callpath.probes import kernel  # noqa: E402

TARGET = "__x64_sys_getpgid"  # syscall wrappers without arguments have no BTF FUNC record (6.1, 6.18)
PROGRAM = r"""
BPF_PERCPU_HASH(cnt, u64, u64, 64);
int empty(void *ctx) { return 0; }
int clock(void *ctx) { u64 t = bpf_ktime_get_ns(); asm volatile("" : : "r"(t)); return 0; }
int count(void *ctx)
{
	u64 key = 1, zero = 0, *v = cnt.lookup_or_try_init(&key, &zero);
	if (v)
		*v += 1;
	return 0;
}
struct big { u64 w[54]; };  /* the size of callpath's per-thread state */
BPF_TABLE("lru_hash", u32, struct big, lru, 16384);
BPF_PERCPU_ARRAY(pcpu, struct big, 1);
BPF_TASK_STORAGE(tstore, struct big);
int pid(void *ctx) { u64 v = bpf_get_current_pid_tgid(); asm volatile("" : : "r"(v)); return 0; }
int lrutid(void *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct big zero = {}, *v = lru.lookup_or_try_init(&tid, &zero);
	if (v)
		v->w[0] += 1;
	return 0;
}
int percpu(void *ctx)
{
	u32 k = 0;
	struct big *v = pcpu.lookup(&k);
	if (v)
		v->w[0] += 1;
	return 0;
}
int task(void *ctx)
{
	struct big *v = tstore.task_storage_get((void *)bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (v)
		v->w[0] += 1;
	return 0;
}
int probe_read(void *ctx)
{
	u64 a = (u64)ctx, b = 0;
	bpf_probe_read_kernel(&b, sizeof(b), &a);
	asm volatile("" : : "r"(b));
	return 0;
}
"""
#: callpath's handlers for the target (bpf/callpath.bpf.c handle(); func id 0, no skb or device)
CALLPATH_HANDLERS = r"""
int cp_entry(unsigned long long *ctx) { return handle(0, CALLPATH_EVENT_ENTRY, 0, 0, 0, 0, stack_addr(ctx)); }
int cp_exit(unsigned long long *ctx) { return handle(0, CALLPATH_EVENT_RETURN, 0, 0, 0, 0, stack_addr(ctx)); }
"""
CALLPATH_RINGBUF_PAGES = 16384  # 64 MiB: 2 x 48 bytes (40 + header) x 250,000 calls of a row fit
#: (row name, mechanism, body: one program for both ends or (entry, exit), program: plain|aggregate|stream)
ROWS = [("nothing attached", None, None),
        ("kprobe, empty", "kprobe", "empty"), ("kprobe+kretprobe, empty", "kprobe-pair", "empty"),
        ("fentry, empty", "fentry", "empty"), ("fentry+fexit, empty", "fentry-pair", "empty"),
        ("kprobe+kretprobe, clock", "kprobe-pair", "clock"), ("fentry+fexit, clock", "fentry-pair", "clock"),
        ("kprobe+kretprobe, count", "kprobe-pair", "count"), ("fentry+fexit, count", "fentry-pair", "count"),
        ("fentry+fexit, pid_tgid", "fentry-pair", "pid"), ("fentry+fexit, probe_read 8 B", "fentry-pair", "probe_read"),
        ("fentry+fexit, LRU hash by tid", "fentry-pair", "lrutid"),
        ("fentry+fexit, per-CPU array", "fentry-pair", "percpu"),
        ("fentry+fexit, task storage", "fentry-pair", "task"), ("kprobe+kretprobe, task storage", "kprobe-pair", "task"),
        ("fentry+fexit, callpath --aggregate", "fentry-pair", ("cp_entry", "cp_exit"), "aggregate"),
        ("fentry+fexit, callpath per event", "fentry-pair", ("cp_entry", "cp_exit"), "stream")]


def loop_ns(calls: int, repeat: int) -> float:
    """Median over ``repeat`` loops of ns per ``getpgid()`` call."""
    per = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            os.getpgid(0)
        per.append((time.perf_counter_ns() - t0) / calls)
    return sorted(per)[len(per) // 2]


def callpath_program(aggregate: bool):
    """callpath's program with the two handlers above, built as the loader builds it (bcc ``BPF``)."""
    from bcc import BPF

    from callpath.bpf import program_source
    from callpath.probes.btf import load_kernel_btf
    from callpath.probes.fields import resolve_fields
    from callpath.probes.cflags import bpf_cflags

    fields = resolve_fields(load_kernel_btf(), kernel.kernel_release())
    bpf = BPF(text=(program_source() + CALLPATH_HANDLERS).encode(),
              cflags=bpf_cflags(CALLPATH_RINGBUF_PAGES, fields, aggregate))
    if aggregate:  # as Recorder.configure: per-thread stacks move aside at a context switch
        bpf.attach_raw_tracepoint(tp=b"sched_switch", fn_name=b"on_sched_switch")
    return bpf


def measure_row(bpf, mech: str | None, body, btf_id: int, args) -> float:
    from callpath.probes.fentry import attach_tracing, load_tracing

    fds: list[int] = []
    entry, exit_ = body if isinstance(body, tuple) else (body, body)
    try:
        if mech and mech.startswith("kprobe"):
            bpf.attach_kprobe(event=TARGET, fn_name=entry)
            if mech == "kprobe-pair":
                bpf.attach_kretprobe(event=TARGET, fn_name=exit_)
        elif mech:
            for name, is_exit in ((entry, False), (exit_, True))[:2 if mech == "fentry-pair" else 1]:
                prog = load_tracing(bpf.dump_func(name.encode()), name, is_exit, btf_id)
                fds += [prog, attach_tracing(prog)]
        return loop_ns(args.calls, args.repeat)
    finally:
        for fd in fds:
            os.close(fd)
        if mech and mech.startswith("kprobe"):
            bpf.detach_kprobe(event=TARGET)
            if mech == "kprobe-pair":
                bpf.detach_kretprobe(event=TARGET)


def inside(args) -> dict:
    from bcc import BPF

    from callpath.probes.btf import load_kernel_btf

    found = load_kernel_btf().func_type_id(TARGET)
    if not found:
        raise SystemExit(f"{TARGET} has no BTF FUNC record on {kernel.kernel_release()}")
    programs = {"plain": BPF(text=PROGRAM)}
    rows = []
    try:
        loop_ns(args.calls // 10, 1)  # warm up the interpreter and caches
        for label, mech, body, *which in ROWS:
            which = which[0] if which else "plain"
            try:
                if which not in programs:
                    print(f"compiling callpath's program ({which}; slow under emulation)", flush=True)
                    programs[which] = callpath_program(which == "aggregate")
                ns = measure_row(programs[which], mech, body, found[1], args)
            except Exception as err:  # noqa: BLE001 - a program this kernel refuses is a finding, not an end
                rows.append({"row": label, "refused": str(err).strip().splitlines()[-1][:200]})
                print(f"{label}: refused: {rows[-1]['refused']}", flush=True)
                continue
            rows.append({"row": label, "ns_per_call": round(ns, 1)})
            print(f"{label}: {ns:,.1f} ns per getpgid()", flush=True)
    finally:
        for bpf in programs.values():
            bpf.cleanup()
    base = rows[0]["ns_per_call"]
    for r in rows:
        if "ns_per_call" in r:
            r["added_ns"] = round(r["ns_per_call"] - base, 1)
    return {"kernel": kernel.kernel_release(), "target": TARGET, "calls": args.calls, "repeat": args.repeat,
            "rows": rows}


def table(result: dict) -> str:
    out = [f"kernel {result['kernel']}, {result['calls']:,} getpgid() per loop, median of {result['repeat']}", "",
           "| probe, body | ns per call | added ns |", "|---|---:|---:|"]
    out += [f"| {r['row']} | {r['ns_per_call']:,.1f} | {r['added_ns']:,.1f} |" if "ns_per_call" in r
            else f"| {r['row']} | refused: {r['refused']} | |" for r in result["rows"]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50000, help="getpgid() calls per loop (default 50000)")
    ap.add_argument("--repeat", type=int, default=5, help="loops per row, the median kept (default 5)")
    ap.add_argument("--kernel", help="lab kernel release (default: the newest with headers)")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside or kernel.has_kprobes():
        return show("bench_probe_cost", 0, inside(args), args.json, table)
    rc, result = run_inside_lab(
        lambda stage: [sys.executable, "-u", str(Path(__file__).resolve()), "--inside", "--calls", str(args.calls),
                       "--repeat", str(args.repeat), "--json", str(stage / "cost.json")],
        "cost.json", args.kernel, append="tsc=reliable clocksource=tsc", tcg_threads="multi")
    return show("bench_probe_cost", rc, result, args.json, table)


if __name__ == "__main__":
    sys.exit(main())
