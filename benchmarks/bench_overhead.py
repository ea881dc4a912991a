"""Benchmark: probe overhead side by side, on one UDP flood, in one lab VM boot.

The flood: datagrams of 64 bytes sent as fast as one Python process can from
macvlan mv0 to macvlan mv1 (bridge mode, each in a namespace of its own; see
benchmarks/overhead_flood.py), counted by a receiver process. The probed
functions are callpath's plan for the shipped specs (or --spec). Variants, in
this order, each with a warm-up flood, then --repeat floods (the median by
received packets/s is kept):

  none       no probes
  kprobe     callpath per-event, kprobe/kretprobe only (Recorder probes="kprobe");
             both per-event variants stream to Parquet like `record` (probes/stream.py)
  fentry     callpath per-event, --probes auto: fentry/fexit wherever the kernel allows,
             kprobe/kretprobe for the rest (the "mechanisms" field counts them)
  fentry-shm, fentry-spool-shm  as fentry and fentry-spool, with the trace and spool in /dev/shm
             (a plain tmpfs) instead of the temp directory (in the lab VM: /tmp, an overlayfs
             whose upper layer is a tmpfs)
  fentry-yield  as fentry, with `record --drain yield`: the drain thread at SCHED_IDLE while it
             keeps up, and a guard process sets it back to SCHED_OTHER when the ring buffer is half
             full (probes/drainsched.py, probes/drainguard.py); the default is SCHED_OTHER throughout
  fentry-defer  as fentry, with `record --drain defer` and a 256 MiB ring buffer (as fentry-held):
             events wait in the ring buffer while a flood lasts and go to the spool in the pauses
  fentry-busy  as fentry, with no spool backlog (TraceStream backlog_bytes=0): each full 64 MiB
             segment is converted during the run, as sustained traffic past the 256 MiB backlog is
  fentry-after  as fentry, with `record --convert-after`: raw records wait on disk and become
             Parquet after the run, so the run spends no CPU on Parquet
  fentry-drain  as fentry, the sink only counts what the ring buffer gives: the cost of the
             probes and the drain alone (no file)
  fentry-held  as fentry-drain, with a 256 MiB ring buffer that is drained only after the
             measured floods: the probes and the ring buffer's reserve/submit, no reader running
  fentry-spool  as fentry-drain, the sink appending each batch to one file beside where the
             trace would be, as the spool does, with no converter process: the write alone
  fentry-devnull  as fentry-spool, into /dev/null: the write(2) calls without the page cache
  fentry-helper-reads  as fentry, with the device facts of fentry entries read by
             bpf_probe_read_kernel (CALLPATH_DIRECT_LOADS=0) instead of plain BTF-typed loads
  aggregate  callpath counting mode (aggregate=True): no events streamed
  aggregate-empty, aggregate-state, aggregate-noclock, aggregate-nopath
             counting mode less a part of its BPF body (benchmarks/ablation.py): where its cost goes
  event-empty, event-noreserve, event-nocomm, event-noclock
             fentry-drain less a part of its BPF body (benchmarks/ablation.py)
  aggregate@FILE  counting mode compiled from the program text in FILE (bpf/callpath.bpf.c with its
             headers pasted in, as ``record --print-bpf`` shows it, changed): a candidate program
             A/B against the current one in one boot (the host's files are visible read-only in the VM)
  bpftrace   bpftrace, kprobe+kretprobe on the plan's symbols, @[probe] = count()
  ftrace     function_graph on the plan's symbols, in a tracefs instance of its own
             (the `function` tracer when this kernel allows no function_graph in an instance)
  none-after no probes again: drift of the VM over the run

Compiling and attaching happen before the warm-up, outside the measured floods.
Before the first probed variant and after each one, a set of no-probe floods is
measured too: each variant's "ratio to neighbours" divides its received
packets/s by the mean of the no-probe floods just before and just after it, so
the VM's drift over the run (up to 2x under TCG) weighs on no variant more than
on another.
Columns: packets/s sent and received, received packets/s as a ratio to `none`,
events the recorder delivered to user space, drained/s (those events divided
by the seconds the recorder was attached), events lost, and hits counted in
the kernel (bpftrace's counts, callpath --aggregate's calls, ftrace's buffer).
Where the running kernel has no kprobes, the benchmark re-runs itself in a lab
VM (the newest lab kernel, or --kernel).

Example:
    flock /tmp/callpath-lab.lock python benchmarks/bench_overhead.py --kernel 6.1.0-56-amd64 --json /tmp/o.json

Under QEMU TCG the absolute figures say little about real hardware; the ratios are the useful numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bpfstats  # noqa: E402
from ablation import ABLATIONS, ablated_source, mode_of  # noqa: E402
from callpath.probes import kernel  # noqa: E402
from inlab import run_inside_lab, show  # noqa: E402
from overhead_flood import flood, macvlan_pair  # noqa: E402
from peers import run_bpftrace, run_ftrace  # noqa: E402
from perfprofile import profiled  # noqa: E402

#: QEMU TCG offers the guest no usable TSC, so its kernel falls back to the HPET, where every clock
#: read is an emulated MMIO access costing microseconds (measured: current_clocksource hpet,
#: available "hpet acpi_pm"). callpath reads the clock twice per call (bpf_ktime_get_ns), bpftrace's
#: count() never, so the HPET would weigh the comparison by an artefact of the emulator. Real machines
#: read the TSC; the benchmark's VM boots with it.
CLOCK_APPEND = "tsc=reliable clocksource=tsc"

VARIANTS = ("none", "kprobe", "fentry", "fentry-shm", "fentry-yield", "fentry-defer", "fentry-busy", "fentry-after", "fentry-drain", "fentry-held", "fentry-spool",
            "fentry-devnull", "fentry-spool-shm",
            "fentry-helper-reads", "aggregate", *ABLATIONS, "bpftrace", "ftrace",
            "none-after")
ROOT = Path(__file__).resolve().parent.parent


def build_plan(spec_paths: list[str], progress):
    """callpath's probe plan for the documents (their modules loaded by the caller)."""
    from callpath.analysis.readers import read_specs
    from callpath.probes.btf import load_kernel_btf
    from callpath.probes.modindex import documented_modules, index_or_none
    from callpath.probes.plan import build_plan as plan_of

    specs = read_specs(spec_paths)
    syms = kernel.load_symbols()
    btf = load_kernel_btf(documented_modules(specs, syms.text, syms.clones))
    return plan_of(specs, syms, btf, index=index_or_none(kernel.kernel_release(), progress))


def symbols(plan) -> list[str]:
    """The plan's probed symbols whose code is loaded (inline sites are left out: no return)."""
    return [fp.symbol for fp in plan.probed() if fp.symbol and not fp.inline_sites
            and fp.status != "module-not-loaded"]


#: /proc/vmstat counters of page reclaim (mm/vmstat.c): pages scanned and taken back by kswapd
#: and by allocating tasks themselves, and the times a task had to reclaim before it could allocate
RECLAIM_COUNTERS = ("pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct", "allocstall_normal")


def memory_state() -> dict[str, int]:
    """/proc/meminfo (kB) and /proc/vmstat counters in one dict; empty where unreadable."""
    out: dict[str, int] = {}
    for path, unit in (("/proc/meminfo", "kB"), ("/proc/vmstat", "")):
        try:
            for line in Path(path).read_text().splitlines():
                parts = line.replace(":", " ").split()
                if len(parts) >= 2 and parts[1].isdigit():
                    out[parts[0]] = int(parts[1])
        except OSError:
            pass
    return out


def measure(socks, args, neighbour: bool = False) -> dict:
    """A warm-up flood, then ``args.repeat`` floods; the median one by received packets/s.

    With ``args.perf`` (and not ``neighbour``: a no-probe flood measured for a ratio) the
    measured floods run under ``perf record -a`` and the row gets ``profile`` lines. ``memory``:
    free memory (MiB) before and after the measured floods, and the page-reclaim counters
    over them (:data:`RECLAIM_COUNTERS`, pages or times)."""
    flood(*socks, args.warmup)
    stats = bpfstats.snapshot() if getattr(args, "bpf_stats", False) else None
    mem0 = memory_state()
    prof: dict = {}
    with profiled(prof, getattr(args, "perf", False) and not neighbour):
        runs = [flood(*socks, args.packets) for _ in range(args.repeat)]
    best = sorted(runs, key=lambda r: r.recv_pps)[len(runs) // 2]
    row = {**prof, "sent_pps": round(best.sent_pps), "recv_pps": round(best.recv_pps), "sent": best.sent,
           "received": best.received, "send_errors": best.errors,
           "recv_pps_all": [round(r.recv_pps) for r in runs]}
    if stats is not None:  # over all measured floods: BPF program runs and ns in them
        row.update(bpfstats.delta(stats, bpfstats.snapshot()))
    mem1 = memory_state()
    row["memory"] = {"free_mib_before": mem0.get("MemFree", 0) >> 10, "free_mib_after": mem1.get("MemFree", 0) >> 10,
                     **{k: mem1.get(k, 0) - mem0.get(k, 0) for k in RECLAIM_COUNTERS}}
    return row


# -- callpath --------------------------------------------------------------
def run_callpath(variant: str, plan, socks, args, progress) -> dict:
    """callpath per event (``kprobe``: kprobes only; ``fentry``: ``--probes auto``, fentry/fexit
    wherever the kernel allows, kprobes for the rest), or counting mode, as ``record`` runs it:
    events go through the same streaming Parquet writer (probes/stream.py) to a scratch file."""
    import tempfile

    from callpath.probes.cflags import bpf_cflags
    from callpath.probes.loader import Recorder
    from callpath.probes.stream import TraceStream

    kwargs: dict = {"probes": "kprobe" if variant == "kprobe" else "auto"}
    stream = None
    where = None
    if variant.endswith("-shm"):
        if not is_tmpfs("/dev/shm"):
            return {"skipped": "/dev/shm is not a tmpfs here"}
        where, variant = "/dev/shm", variant.removesuffix("-shm")
    scratch = tempfile.TemporaryDirectory(prefix="callpath-bench-", dir=where)
    if variant == "fentry-yield":
        kwargs["drain"] = "yield"
    if variant == "fentry-defer":
        kwargs.update(drain="defer", ringbuf_pages=HELD_RINGBUF_PAGES)
    if variant == "aggregate":
        kwargs["aggregate"] = True
    elif variant == "fentry-drain":
        kwargs["sink"] = lambda batch: None  # Recorder counts the events it hands over
    elif variant == "fentry-held":
        held = HeldSink()
        kwargs.update(sink=held, ringbuf_pages=HELD_RINGBUF_PAGES)
    elif variant in ("fentry-spool", "fentry-devnull"):
        kwargs["sink"] = FileSink(os.devnull if variant == "fentry-devnull" else Path(scratch.name) / "spool")
    else:
        stream = TraceStream(Path(scratch.name) / "trace.parquet", plan.slot_names(), plan,
                             convert_during=variant != "fentry-after",
                             **({"backlog_bytes": 0} if variant == "fentry-busy" else {}))
        kwargs["sink"] = stream
    try:
        rec = Recorder(plan, progress=progress, **kwargs)
        if variant == "fentry-helper-reads":
            rec.cflags = lambda: bpf_cflags(rec.ringbuf_pages, plan.fields) + ["-DCALLPATH_DIRECT_LOADS=0"]
        with rec:
            t0 = time.monotonic()
            try:
                row = measure(socks, args)
            finally:
                if variant == "fentry-held":
                    held.release()  # the drain goes on, so leaving the recorder cannot hang on it
        seconds = time.monotonic() - t0
        if stream is not None:
            t1 = time.monotonic()
            stream.close({"bench": variant})
            row["close_s"] = round(time.monotonic() - t1, 2)
    finally:
        scratch.cleanup()
    events = rec.events
    row.update(events=events, drained_per_s=round(events / seconds) if seconds else 0,
               recording_s=round(seconds, 2), lost=int(rec.lost), drain=rec.drain, drain_boosts=rec.drain_boosts, attached=len(rec.attach.attached),
               failed=dict(rec.attach.failed))
    agg = getattr(rec, "aggregate", None)
    if agg:
        row["counted"] = sum(p["calls"] for p in agg["paths"])
    probes = {}
    for fp in plan.probed():
        if fp.probe:
            probes[fp.probe] = probes.get(fp.probe, 0) + 1
    row["mechanisms"] = probes
    return row


def is_tmpfs(path: str) -> bool:
    """Whether ``path`` is a mount point of a tmpfs (from /proc/mounts)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(f[1] == path and f[2] == "tmpfs" for f in (ln.split() for ln in mounts) if len(f) > 2)


#: fentry-held's ring buffer: 256 MiB, room for every record of a default run's floods
#: (about 1.4 million 48-byte records in the lab's macvlan flood)
HELD_RINGBUF_PAGES = 65536


class HeldSink:
    """A Recorder sink whose first batch holds the drain thread until ``release()``: the
    floods run with a ring buffer nobody reads (the kernel side's cost alone), drained after."""

    def __init__(self):
        import threading

        self._go = threading.Event()

    def release(self) -> None:
        self._go.set()

    def __call__(self, batch) -> None:
        self._go.wait()


class FileSink:
    """A Recorder sink that appends each batch's raw records to one file (unbuffered), as
    probes/stream.py's spool does, and nothing else (no converter)."""

    borrows_batches = True

    def __init__(self, path):
        self.fh = open(path, "wb", buffering=0)  # noqa: SIM115 - closed with the scratch directory

    def __call__(self, batch) -> None:
        import numpy as np
        from callpath.probes.stream import _write_all

        _write_all(self.fh, np.ascontiguousarray(batch).view(np.uint8))


# -- the run -----------------------------------------------------------------
def run_ablation(v: str, plan, socks, args, progress) -> dict:
    """Counting mode (``aggregate-*``) or the per-event drain (``event-*``) with ablation ``v``
    (benchmarks/ablation.py) in the program text bcc compiles."""
    from callpath.bpf import program_source

    return run_text(ablated_source(v, program_source()), mode_of(v), plan, socks, args, progress)  # ValueError first


def candidate_file(v: str) -> Path | None:
    """The program file of variant ``aggregate@FILE``, else None."""
    return Path(v.split("@", 1)[1]) if v.startswith("aggregate@") else None


def run_text(text: str, variant: str, plan, socks, args, progress) -> dict:
    """callpath ``variant`` compiled from ``text`` instead of bpf/callpath.bpf.c (the generated
    fentry handlers are appended as usual)."""
    from callpath.bpf import program_source
    from callpath.probes import bpfgen

    bpfgen.program_source = lambda: text
    try:
        return run_callpath(variant, plan, socks, args, progress)
    finally:
        bpfgen.program_source = program_source


def run_variant(v: str, plan, socks, args, progress) -> dict:
    """One probed variant's row; a variant that fails gives ``{"skipped": why}``, the others go on."""
    try:
        if v == "bpftrace":
            with kernel.mounted_tracefs():  # bpftrace checks available_filter_functions
                return run_bpftrace(symbols(plan), lambda: measure(socks, args), progress)
        if v == "ftrace":
            return run_ftrace(symbols(plan), lambda: measure(socks, args), progress)
        if v in ABLATIONS:
            return run_ablation(v, copy.deepcopy(plan), socks, args, progress)
        if candidate_file(v):
            return run_text(candidate_file(v).read_text(), "aggregate", copy.deepcopy(plan), socks, args, progress)
        return run_callpath(v, copy.deepcopy(plan), socks, args, progress)
    except Exception as err:  # noqa: BLE001 - one variant failing leaves the others measured
        return {"skipped": f"failed: {type(err).__name__}: {err}"[:300]}


def inside(args) -> dict:
    """All variants on the running kernel (root, kprobes); returns the result dict."""
    from callpath.analysis.readers import read_specs
    from callpath.probes.modindex import index_or_none, modules_to_load

    progress = lambda m: print(m, flush=True)  # noqa: E731
    specs = read_specs(args.spec)
    syms = kernel.load_symbols()
    index = index_or_none(kernel.kernel_release(), progress)
    result = {"kernel": kernel.kernel_release(), "mem_total_mib": memory_state().get("MemTotal", 0) >> 10,
              "packets": args.packets, "warmup": args.warmup,
              "repeat": args.repeat, "rounds": args.rounds, "variants": {}}
    stats_fd = None
    if args.bpf_stats:
        try:
            stats_fd = bpfstats.enable_stats()
            result["bpf_stats"] = True
            progress("BPF run-time statistics on (BPF_ENABLE_STATS): every program pays two clock reads per run")
        except OSError as err:
            progress(f"--bpf-stats: {err}; measuring without")
            args.bpf_stats = False
    try:
        with kernel.modules_loaded(modules_to_load(specs, index, syms.text, syms.clones)), macvlan_pair() as socks:
            plan = build_plan(args.spec, progress)
            result["functions"] = len(symbols(plan))
            progress(f"kernel {result['kernel']}: {result['functions']} functions probed; "
                     f"{args.packets} datagrams per flood mv0 -> mv1")
            before = None  # no-probe floods between the probed variants: the VM drifts (+-2x under TCG)
            for rnd in range(args.rounds):
                for v in args.variants:
                    if (v == "none" and rnd) or (v == "none-after" and rnd < args.rounds - 1):
                        continue
                    progress(f"-- {v}" + (f" (round {rnd + 1} of {args.rounds})" if args.rounds > 1 else ""))
                    if v in ("none", "none-after"):
                        result["variants"][v] = measure(socks, args)
                        for line in result["variants"][v].get("profile", []):
                            progress(f"   perf: {line}")
                        continue
                    if before is None:
                        before = measure(socks, args, neighbour=True)["recv_pps"]
                    row = run_variant(v, plan, socks, args, progress)
                    # the no-probe flood after it is the next variant's "before"
                    after = measure(socks, args, neighbour=True)["recv_pps"]
                    row["neighbours_recv_pps"] = [before, after]
                    progress(f"   no-probe floods around it: {before:,} and {after:,} received/s")
                    before = after
                    first = result["variants"].setdefault(v, row)
                    if "recv_pps" in row and sum(row["neighbours_recv_pps"]):
                        first.setdefault("rounds_ratio_nb", []).append(
                            round(row["recv_pps"] / (sum(row["neighbours_recv_pps"]) / 2), 3))
                    progress(f"   {json.dumps({k: x for k, x in row.items() if k not in ('profile', 'memory')})[:300]}")
                    if "memory" in row:
                        progress(f"   memory: {json.dumps(row['memory'])}")
                    for line in row.get("profile", []):
                        progress(f"   perf: {line}")
    finally:  # statistics go off with their fd
        if stats_fd is not None:
            os.close(stats_fd)
    return result


def table(result: dict) -> str:
    """The side-by-side table (Markdown)."""
    base = (result["variants"].get("none") or {}).get("recv_pps")
    stats = result.get("bpf_stats", False)
    out = [f"kernel {result['kernel']}" + (f" ({result['mem_total_mib']:,} MiB of memory)" if result.get("mem_total_mib")
                                            else "") + f", {result['functions']} functions, {result['packets']} datagrams "
           f"per flood (median of {result['repeat']}); ratio: to `none`; neighbours: to the mean of the "
           "no-probe floods measured just before and just after the variant"
           + (f"; {result['rounds']} rounds of every probed variant, in turn: the median round, then each"
              if result.get("rounds", 1) > 1 else ""), "",
           "| variant | sent/s | received/s | ratio | ratio to neighbours | events | drained/s | lost | "
           "counted in kernel |" + (" BPF runs | BPF ns/run |" if stats else ""),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if stats else "")]
    for v, row in result["variants"].items():
        if "skipped" in row:
            out.append(f"| {v} | not measured: {row['skipped']} ||||||||")
            continue
        name = f"ftrace {row['tracer']}" if v == "ftrace" else v
        ratio = f"{row['recv_pps'] / base:.2f}" if base else "-"
        cell = lambda k: f"{row[k]:,}" if row.get(k) is not None else "-"  # noqa: E731
        nb, rounds = row.get("neighbours_recv_pps"), row.get("rounds_ratio_nb") or []
        if len(rounds) > 1:  # the median round; each round's ratio in brackets
            near = f"{statistics.median(rounds):.2f} ({' '.join(f'{r:.2f}' for r in rounds)})"
        else:
            near = f"{row['recv_pps'] / (sum(nb) / 2):.2f}" if nb and sum(nb) else "-"
        out.append(f"| {name} | {row['sent_pps']:,} | {row['recv_pps']:,} | {ratio} | {near} | {cell('events')} | "
                   f"{cell('drained_per_s')} | {cell('lost')} | {cell('counted')} |"
                   + (f" {cell('bpf_runs')} | {cell('bpf_ns_per_run')} |" if stats else ""))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=20000, help="datagrams per measured flood (default 20000)")
    ap.add_argument("--warmup", type=int, default=2000, help="datagrams of the warm-up flood (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="measured floods per variant (default 3)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="go through the probed variants this many times, in turn (default 1): the VM's speed "
                    "drifts between boots and within one, and rounds spread that over every variant alike")
    ap.add_argument("--spec", action="append", help="document or folder to plan from (default: specs/)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset, in order")
    ap.add_argument("--kernel", help="lab kernel release (default: the newest with headers)")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("--append", default=CLOCK_APPEND,
                    help=f"lab VM kernel command line additions (default {CLOCK_APPEND!r}; '' for none)")
    ap.add_argument("--tcg-threads", choices=["multi", "single"], default="multi",
                    help="QEMU TCG threading of the lab VM (default multi: a host thread per vCPU, as the README's "
                    "table was measured; callpath's lab runs use single, see probes/labvm.py)")
    ap.add_argument("--memory", default="2G",
                    help="the lab VM's memory (vng --memory; default 2G, as every table in the README was measured)")
    ap.add_argument("--prealloc", action="store_true",
                    help="back the lab VM's RAM with host memory at boot (QEMU -mem-prealloc): no host page fault "
                         "on a guest page's first write")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="turn on BPF run-time statistics (BPF_ENABLE_STATS) and add each variant's BPF program "
                    "runs and ns per run (bodies only, no kprobe or trampoline around them; slows every program)")
    ap.add_argument("--perf", action="store_true",
                    help="profile each variant's measured floods with `perf record -a -e cpu-clock` and print the "
                    "heaviest command/DSO/symbol lines (benchmarks/perfprofile.py); sampling slows every variant a little")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.rounds < 1 or args.repeat < 1:
        ap.error("--rounds and --repeat take 1 or more")
    if bad := [v for v in args.variants if v not in VARIANTS and not (candidate_file(v) and candidate_file(v).is_file())]:
        ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}, aggregate@FILE (an existing file)")
    args.variants = [str(candidate_file(v).resolve()).join(("aggregate@", "")) if candidate_file(v) else v
                     for v in args.variants]
    args.spec = [str(Path(p).resolve()) for p in args.spec or [ROOT / "specs"]]
    if args.inside or kernel.has_kprobes():
        return show("bench_overhead", 0, inside(args), args.json, table)
    from callpath.analysis.readers import expand_spec_args
    from callpath.probes.session import _stage_specs

    def inner(stage: Path) -> list[str]:  # the stage is the only read-write share; documents copied in
        argv = [sys.executable, "-u", str(Path(__file__).resolve()), "--inside", "--packets", str(args.packets),
                "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--rounds", str(args.rounds),
                "--variants", ",".join(args.variants), "--json", str(stage / "overhead.json")]
        argv += ["--bpf-stats"] if args.bpf_stats else []
        argv += ["--perf"] if args.perf else []
        for staged in _stage_specs(expand_spec_args(args.spec), stage):
            argv += ["--spec", str(staged)]
        return argv

    rc, result = run_inside_lab(inner, "overhead.json", args.kernel, append=args.append or None,
                                tcg_threads=args.tcg_threads, memory=args.memory,
                                prealloc=args.prealloc)
    return show("bench_overhead", rc, result, args.json, table)


if __name__ == "__main__":
    sys.exit(main())
