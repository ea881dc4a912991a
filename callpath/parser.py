"""The ``callpath`` argument parser (the subcommands, their options and ``--help`` texts).

:mod:`callpath.cli` parses with it and dispatches.
"""

from __future__ import annotations

import argparse

from . import __version__

EXAMPLES = """\
examples:
  callpath verify                                 # shipped specs, built-in traffic, report in callpath-report/
  callpath verify specs/macvlan-newlink-xmit.txt --workload macvlan --out /tmp/mv
  callpath verify --kernel 6.1.0-56-amd64         # pick the lab kernel
  callpath verify --kernel all --out /tmp/k       # every lab kernel, side by side (report-kernels.md)
  callpath verify --host --duration 30            # this kernel; record 30 s of your own traffic
  callpath verify --host --netns blue --dev eth0 --duration 60   # only events of eth0 in netns blue
  callpath verify --probes kprobe --aggregate     # kprobes only; count in the kernel, no event stream
  sudo callpath record specs/ --out t.parquet -- ./my-traffic.sh
  sudo callpath record specs/ --out t.parquet --pid 1234 --until-interrupt    # one process's calls
  sudo callpath record specs/ --out t.parquet --drain defer --ringbuf-pages 65536 -- ./burst.sh
                                                  # bursts wait in a 256 MiB ring buffer, written in pauses
  callpath report callpath-report/trace.parquet --out /tmp/again
  callpath report /tmp/k/6.1.0-56-amd64 /tmp/k/6.12.117+deb12-amd64 --out /tmp/k   # compare traces
  callpath lint specs/*                           # static check against the running kernel
  callpath convert specs/veth-macvlan-notes.md    # into callpath's own TOML format
  callpath kernels                                # lab kernels installed
"""


def _add_doc_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-doc-bytes", type=int, metavar="N",
                   help="largest document read, in bytes (default 16 MiB, or $CALLPATH_MAX_DOC_BYTES)")


def _add_traffic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("traffic (default: every built-in workload)")
    g.add_argument("--workload", action="append", metavar="NAME", choices=["veth", "macvlan", "ipvlan"],
                   help="built-in workload to run (repeatable): veth, macvlan, ipvlan")
    g.add_argument("--packets", type=int, default=50, metavar="N", help="datagrams per traffic class (default 50)")
    g.add_argument("--duration", type=float, metavar="S", help="record S seconds of your own traffic instead")
    g.add_argument("--until-interrupt", action="store_true", help="record your own traffic until Ctrl-C")
    g.add_argument("--ringbuf-pages", type=int, default=1024, metavar="N",
                   help="BPF ring buffer size in 4 KiB pages, a power of two (default 1024 = 4 MiB)")
    p.set_defaults(command=[])
    p.epilog = (p.epilog or "") + "\nEverything after -- is a command to record around (`callpath record specs/ --out t.parquet -- ./traffic.sh`).\n"


#: Exit status when the kernel lost events (ring buffer full): the trace is complete otherwise.
EXIT_LOST = 3

EXIT_STATUS = f"""
exit status: 0 done, 1 failure, 2 bad input (documents, filters, outputs),
  {EXIT_LOST} the kernel lost events (ring buffer full; counted per CPU in the trace metadata:
    use a bigger --ringbuf-pages, filters, or --aggregate), 130 interrupted
"""


def _add_probe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("probing and in-kernel filters (filters: on the probed machine, not in the lab VM)")
    g.add_argument("--probes", choices=["auto", "kprobe", "fentry"], default="auto",
                   help="auto (default): fentry/fexit where a function allows it, kprobe/kretprobe otherwise; "
                   "kprobe: kprobe/kretprobe everywhere; fentry: fentry/fexit only (others not probed)")
    g.add_argument("--aggregate", action="store_true",
                   help="count calls, callers, sibling order and latency histograms in BPF maps instead of "
                   "streaming every event (long runs, busy hosts)")
    g.add_argument("--convert-after", action="store_true",
                   help="keep raw events on disk (40 bytes each) during the run and write the Parquet trace "
                   "after it: the run spends no CPU on Parquet (busy hosts; needs the disk space)")
    g.add_argument("--drain", choices=["normal", "yield", "defer"], default="normal",
                   help="normal (default): the thread copying events out of the ring buffer runs at the normal "
                   "policy. yield (experimental): at SCHED_IDLE while it keeps up, so the traced workload's "
                   "threads preempt it at once, set back to the normal policy by a guard process when the "
                   "ring buffer is half full; in the lab it cost as much as normal and lost more events "
                   "(README, Overhead). defer: leave events in the ring buffer while traffic flows and read "
                   "them when it pauses (0.2 s) or the ring buffer is half full: a burst that fits costs "
                   "the traffic no copy and no disk write; size the ring buffer for it with --ringbuf-pages")
    g.add_argument("--netns", metavar="NAME|PATH|INODE",
                   help="keep only events in this network namespace (a name under /run/netns, a path, or an inode)")
    g.add_argument("--dev", metavar="IFNAME", help="keep only events of this interface (in --netns, else in ours)")
    g.add_argument("--pid", type=int, metavar="PID", help="keep only events of this process (its threads)")
    p.epilog = (p.epilog or "") + EXIT_STATUS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callpath",
        description="Check that the kernel follows documented call paths: probe the documented functions while "
        "traffic flows, rebuild the call trees, and report per step: observed, out of order, not exercised, "
        "absent (inlined/renamed), not traceable or not a call; plus per-packet latency histograms.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callpath {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    v = sub.add_parser("verify", help="probe, record traffic and write the conformance report",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("specs", nargs="*", metavar="SPEC", help="documents or directories (default: the shipped specs/)")
    v.add_argument("--out", default="callpath-report", metavar="DIR", help="report directory (default callpath-report/)")
    where = v.add_mutually_exclusive_group()
    where.add_argument("--kernel", action="append", metavar="RELEASE",
                       help="lab VM kernel release (default: newest installed with headers); repeat it, or give "
                       "'all' (every installed kernel with headers), to run the documents on each kernel and "
                       "compare them side by side (report-kernels.md)")
    where.add_argument("--host", action="store_true", help="probe the running kernel (needs root and kprobes)")
    v.add_argument("--load-modules", action="store_true",
                   help="with --host: load the modules that define documented functions before probing (unloaded "
                   "at the end); without it, their functions are probed if the modules arrive during the run. "
                   "The lab VM always loads them")
    v.add_argument("--json", action="store_true", help="print the report JSON on stdout instead of the summary")
    v.add_argument("--lab-timeout", type=float, default=1500, metavar="S", help="give up on the lab VM after S seconds")
    v.add_argument("--debuginfo", action="append", metavar="DIR",
                   help="a folder with the kernel's DWARF (module .ko debug files, a debug root): inlined "
                   "functions are probed at their inline sites (also searched: /usr/lib/debug, callpath's cache)")
    _add_traffic_args(v)
    _add_probe_args(v)

    r = sub.add_parser("record", help="record a trace on the running kernel (root, kprobes)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("specs", nargs="*", metavar="SPEC", help="documents or directories (default: the shipped specs/)")
    r.add_argument("--out", required=True, metavar="TRACE.parquet", help="trace file to write")
    r.add_argument("--load-modules", action="store_true",
                   help="load the modules that define documented functions before probing (unloaded at the end); "
                   "without it, their functions are probed if the modules arrive during the run")
    r.add_argument("--debuginfo", action="append", metavar="DIR",
                   help="a folder with the kernel's DWARF: inlined functions are probed at their inline sites")
    r.add_argument("--where", default="", help=argparse.SUPPRESS)
    r.add_argument("--boot-graph", metavar="FILE", help=argparse.SUPPRESS)
    r.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)
    _add_traffic_args(r)
    _add_probe_args(r)

    rp = sub.add_parser("report", help="analyse a saved trace again (no root needed)")
    rp.add_argument("trace", nargs="+", metavar="TRACE",
                    help="trace.parquet, or a report directory holding one; several (one per kernel): "
                    "each one's report in OUT/<kernel>/ and a side-by-side report-kernels.md in OUT")
    rp.add_argument("--spec", action="append", metavar="SPEC", help="documents to check (default: those recorded in the trace)")
    rp.add_argument("--out", metavar="DIR", help="report directory (default: the trace's directory)")
    rp.add_argument("--json", action="store_true", help="print the report JSON on stdout")
    rp.add_argument("--jobs", type=int, metavar="N", help="several traces: analyse N at once (default: one per core)")
    rp.add_argument("--scheduler", metavar="ADDRESS",
                    help="analyse each trace on a Dask distributed cluster (tcp://host:8786); the traces and OUT "
                    "must be on a file system its workers share (pip install 'callpath[dask]')")
    _add_doc_limit(rp)

    li = sub.add_parser("lint", help="check documents against a kernel: no traffic, no probes",
                        epilog="examples:\n  callpath lint specs/*\n  callpath lint specs/ --kernel 6.1.0-56-amd64 --json\n\n"
                        "exit status: 0 all documented functions exist, 1 some are absent, 2 bad input",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    li.add_argument("specs", nargs="*", metavar="SPEC", help="documents or directories (default: the shipped specs/)")
    lwhere = li.add_mutually_exclusive_group()
    lwhere.add_argument("--kernel", metavar="RELEASE", help="lint against a lab kernel (boots the lab VM, about 1 minute)")
    lwhere.add_argument("--host", action="store_true", help="lint against the running kernel (the default)")
    li.add_argument("--json", action="store_true", help="print JSON for machines")
    li.add_argument("--debuginfo", action="append", metavar="DIR",
                    help="a folder with the kernel's DWARF: tells inlined functions from removed ones")
    li.add_argument("--output", metavar="FILE", help=argparse.SUPPRESS)
    _add_doc_limit(li)
    li.add_argument("--in-lab-guest", action="store_true", help=argparse.SUPPRESS)  # may load modules: our VM

    cv = sub.add_parser("convert", help="convert documents into callpath's own TOML spec format",
                        epilog="examples:\n  callpath convert specs/macvlan-newlink-xmit.txt > macvlan.toml\n"
                        "  callpath convert specs/ --out-dir converted/\n  callpath convert --schema",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("specs", nargs="*", metavar="DOC", help="documents to convert")
    cv.add_argument("--out-dir", metavar="DIR", help="write DIR/<name>.toml per document instead of stdout")
    cv.add_argument("--schema", action="store_true", help="print the format's JSON Schema and exit")
    _add_doc_limit(cv)

    ex = sub.add_parser("export", help="write a saved trace as a timeline (Perfetto / chrome://tracing JSON)",
                        epilog="examples:\n  callpath export callpath-report/trace.parquet --perfetto timeline.json\n"
                        "  (open it at https://ui.perfetto.dev or chrome://tracing)",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("trace", metavar="TRACE", help="trace file (or a report directory holding trace.parquet)")
    ex.add_argument("--perfetto", required=True, metavar="FILE.json",
                    help="Chrome trace-event JSON: a track per thread, nested call slices, packet flow arrows")

    sub.add_parser("kernels", help="list installed lab kernels")
    sub.add_parser("cleanup", help="remove what killed callpath runs left behind (namespaces, mounts, lab VMs)")
    return parser
