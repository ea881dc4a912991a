"""The ``callpath`` command line: verify, record, report, kernels.

``main(argv=None) -> int`` can be called from tests. Errors are one line on
stderr, never a traceback; progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
  callpath report callpath-report/trace.parquet --out /tmp/again
  callpath report /tmp/k/6.1.0-56-amd64 /tmp/k/6.12.117+deb12-amd64 --out /tmp/k   # compare traces
  callpath lint specs/*                           # static check against the running kernel
  callpath convert specs/veth-macvlan-notes.md    # into callpath's own TOML format
  callpath kernels                                # lab kernels installed
"""


def _progress(msg: str) -> None:
    from .analysis.textsafe import terminal

    print(f"callpath: {terminal(msg)}", file=sys.stderr, flush=True)


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


def _emit_report(trace_path: Path, specs, out: Path, as_json: bool, trace=None) -> int:
    from .analysis.report import finish_report, summary_lines, write_report
    from .analysis.trace import read_trace

    from .analysis.textsafe import terminal
    from .outputs import staged_dir

    trace = trace if trace is not None else read_trace(trace_path)
    _progress("analysing: call trees, conformance, latency")
    plots: list = []
    with staged_dir(out) as tmp:  # the previous report stays until this one is complete
        report = write_report(trace, specs, tmp, plot_jobs=plots, release_events=True)
    _progress(f"{out / 'report.json'} and report.md written; drawing {len(plots)} plots and report.html")
    with staged_dir(out) as tmp:
        finish_report(report, tmp, plots)
    missing = report.get("not_recorded") or []
    if missing:
        _progress(f"{len(missing)} documented function{'s' if len(missing) != 1 else ''} not recorded in this trace "
                  f"(verdict not-recorded; record with these documents to check them): {', '.join(missing)}")
    back = (report.get("time_backwards") or {}).get("count", 0)
    if back:
        _progress(f"trace defect: {back} timestamps go backwards within a thread (see report.md)")
    if report.get("unterminated"):
        _progress(f"{report['unterminated']} calls without their own return: they prove no nesting (see report.md)")
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(terminal(f"kernel {report['kernel']} ({report['where'] or 'running kernel'}): {report['events']} events, "
                   f"{report['lost']} lost"))
    print("observed/checkable per path:")
    for line in summary_lines(report):
        print("  " + line)
    print(terminal(f"report: {out / 'report.md'} (JSON: {out / 'report.json'}, trace: {trace_path})"))
    return 0


def _default_workloads(args, specs) -> None:
    """Without --workload and user traffic, run the workloads the documents' paths name."""
    if args.workload or args.duration or args.until_interrupt or [c for c in args.command if c != "--"]:
        return
    wanted = [w for s in specs for p in s.paths for w in p.workloads]
    args.workload = list(dict.fromkeys(wanted)) or None


def _traffic(args):
    from .probes.session import Traffic

    command = [c for c in args.command if c != "--"]
    return Traffic(workloads=args.workload, packets=args.packets, duration=args.duration,
                   until_interrupt=args.until_interrupt, command=command or None, ringbuf_pages=args.ringbuf_pages)


def _probing(args):
    from .probes.session import Probing

    return Probing(probes=args.probes, aggregate=args.aggregate, netns=args.netns, dev=args.dev, pid=args.pid)


def _display_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (for file:line)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except (ValueError, RuntimeError, OSError):  # outside the cwd; a symlink loop is reported when read
        return path


def cmd_verify(args) -> int:
    from .analysis.readers import expand_spec_args, read_spec
    from .probes import kernel, session

    on_host = args.host or (not args.kernel and kernel.has_kprobes())
    session.needs_root(on_host)
    given = expand_spec_args(args.specs)
    specs = [read_spec(_display_path(p)) for p in given]
    _default_workloads(args, specs)
    traffic, probing = _traffic(args), _probing(args)
    if not on_host:
        probing.check_lab()  # before any boot
    session.sweep(_progress)
    out = Path(args.out).resolve()
    t0 = time.monotonic()
    if on_host:
        out.mkdir(parents=True, exist_ok=True)
        trace_path = session.verify_on_host(specs, out / "trace.parquet", traffic, _progress,
                                            load_modules=args.load_modules, debuginfo=args.debuginfo, probing=probing)
    else:
        from .probes.labvm import choose_kernels

        labs = choose_kernels(args.kernel)
        if len(labs) > 1:
            return _verify_kernels(labs, given, specs, out, traffic, args.lab_timeout, t0, args.json, probing)
        lab = labs[0]
        why = "requested" if args.kernel else f"the running kernel {kernel.kernel_release()} has no kprobes"
        _progress(f"probing in a lab VM on Debian kernel {lab.release} ({why})")
        trace_path = session.verify_in_lab(lab, given, out, traffic, _progress, args.lab_timeout, specs=specs,
                                           debuginfo=args.debuginfo, probing=probing)
    _progress(f"recorded in {time.monotonic() - t0:.0f} s")
    rc = _emit_report(trace_path, specs, out, args.json)
    return _lost_status(rc, [trace_path])


def _lost_status(rc: int, traces) -> int:
    """``rc``, or :data:`EXIT_LOST` (with a line saying so) when a trace records lost events."""
    from .analysis.trace import read_meta

    lost = {str(t): read_meta(t).get("lost", 0) for t in traces}
    lost = {t: n for t, n in lost.items() if n}
    if not lost or rc not in (0,):
        return rc
    _progress(f"events were lost ({'; '.join(f'{n} in {t}' for t, n in lost.items())}): the kernel's ring buffer "
              f"was full; exit status {EXIT_LOST} (a bigger --ringbuf-pages, filters or --aggregate help)")
    return EXIT_LOST


def _verify_kernels(labs, given, specs, out: Path, traffic, timeout_s: float, t0: float, as_json: bool,
                    probing=None) -> int:
    from .probes.kernelmatrix import verify_kernels

    _progress(f"probing in lab VMs on {len(labs)} kernels, one boot each: {', '.join(k.release for k in labs)}")
    cmp, failed = verify_kernels(labs, given, specs, out, traffic, _progress, timeout_s, probing=probing)
    _progress(f"recorded on {len(labs) - len(failed)} of {len(labs)} kernels in {time.monotonic() - t0:.0f} s")
    if cmp is None:
        _progress("no kernel produced a trace; see the [lab] lines above")
        return 1
    _print_comparison(cmp, out, as_json)
    return _lost_status(1 if failed else 0, [out / k.release / "trace.parquet" for k in labs if k.release not in failed])


def _print_comparison(cmp: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(cmp, indent=2, default=str))
        return
    for k in cmp["kernels"]:
        print(f"kernel {k}: {cmp['events'][k]} events, report {out / cmp['reports'][k] / 'report.md'}")
    for k, err in cmp.get("failed", {}).items():
        print(f"kernel {k}: failed: {err}")
    print(f"drift ({len(cmp['drift'])} functions differ or are absent everywhere):")
    for d in cmp["drift"]:
        print(f"  {d['function']:<32} {', '.join(d['kinds']):<20} {'; '.join(d['changes'])}")
    print(f"{cmp['changed_steps']} steps have different verdicts; side by side: {out / 'report-kernels.md'} "
          f"(JSON: {out / 'report-kernels.json'})")


def cmd_record(args) -> int:
    from .analysis.readers import read_specs
    from .probes.record import record

    if args.print_bpf:
        from .bpf import PROGRAM

        print(PROGRAM.read_text())
        return 0
    specs = read_specs(args.specs)
    from .probes import session

    options = _probing(args).kwargs()  # filters resolved (or refused) before anything else
    session.sweep(_progress)
    path = record(specs, Path(args.out), where=args.where, boot_graph=args.boot_graph,
                  load_modules=args.load_modules, debuginfo=args.debuginfo, progress=_progress,
                  **_traffic(args).kwargs(), **options)
    return _lost_status(0, [path])


def cmd_report(args) -> int:
    from .analysis.readers import read_specs
    from .analysis.trace import read_trace

    from .analysis.parallel import analyse_many, trace_files

    paths = trace_files(args.trace)
    if len(paths) > 1 or args.scheduler:
        out = Path(args.out or "callpath-report")
        cmp, _ = analyse_many(paths, args.spec, out, scheduler=args.scheduler, workers=args.jobs,
                              max_doc_bytes=args.max_doc_bytes, progress=_progress)
        _print_comparison(cmp, out, args.json)
        return 1 if cmp.get("failed") else 0
    trace_path = paths[0]
    trace = read_trace(trace_path)  # read once; checks the metadata before anything is written
    specs = read_specs(args.spec or trace.meta.get("specs", []), args.max_doc_bytes)
    out = Path(args.out) if args.out else trace_path.parent
    return _emit_report(trace_path, specs, out, args.json, trace=trace)


def cmd_lint(args) -> int:
    from .probes import session
    from .probes.lint import render_text

    given, specs, bad = _read_documents(args)
    if not specs:
        return 2
    if args.kernel:
        from .probes.labvm import choose_kernel

        lab = choose_kernel(args.kernel)
        _progress(f"linting against lab kernel {lab.release} (booting the lab VM)")
        result = session.lint_in_lab(lab, given, _progress, sources=[s.source for s in specs],
                                     debuginfo=args.debuginfo, specs=specs)
    elif args.in_lab_guest:
        result = session.lint_in_guest(specs, _progress, args.debuginfo)
    else:
        result = session.lint_on_host(specs, _progress, args.debuginfo)
    text = json.dumps(result, indent=2) if args.json else render_text(result)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 2 if bad else 1 if result["absent"] else 0


def _read_documents(args):
    """Read every document the arguments name; print one line per bad one and every warning.

    Returns ``(paths, specs, errors)`` for the good documents and the bad ones.
    """
    from .analysis.readers import read_each, select_documents

    selection = select_documents(args.specs)
    good, bad = read_each(selection.documents, args.max_doc_bytes, _display_path)
    for err in bad:
        _progress(f"error: {err}")
    for _, spec in good:
        for w in spec.warnings:
            _progress(f"warning: {w}")
    if bad:
        _progress(f"{len(bad)} of {len(selection.documents)} documents cannot be read (exit status 2)")
    return [p for p, _ in good], [s for _, s in good], bad


def cmd_convert(args) -> int:
    from .analysis import ownspec

    if args.schema:
        print(json.dumps(ownspec.schema(), indent=2))
        return 0
    if not args.specs:
        raise SystemExit("callpath convert: give at least one document (or --schema)")
    from .outputs import check_distinct, check_out_dir, staged_dir

    if args.out_dir:
        check_out_dir(args.out_dir)
    given, specs, bad = _read_documents(args)
    if bad:  # all or nothing: no partial output
        _progress("nothing converted")
        return 2
    if not args.out_dir:
        for spec in specs:
            print(ownspec.dumps(spec))
        return 0
    targets = [Path(args.out_dir) / (p.stem + ".toml") for p in given]
    check_distinct(zip(map(str, given), targets))
    with staged_dir(args.out_dir) as tmp:
        for p, spec, target in zip(given, specs, targets):
            (tmp / target.name).write_text(ownspec.dumps(spec))
            _progress(f"{p} -> {target} ({len(spec.paths)} paths, {sum(len(x.steps) for x in spec.paths)} steps)")
    return 0


def cmd_kernels(_args) -> int:
    from .probes import kernel
    from .probes.labvm import list_lab_kernels

    print(f"running: {kernel.kernel_release()} (kprobes: {'yes' if kernel.has_kprobes() else 'no'})")
    ks = list_lab_kernels()
    if not ks:
        print("no lab kernel installed (make setup installs Debian's linux-image-amd64)")
    for k in ks:
        print(f"lab: {k.release}  {k.image}  headers: {'yes' if k.headers else 'no (bcc cannot compile for it)'}")
    return 0


def cmd_cleanup(_args) -> int:
    from .probes import runstate

    removed = runstate.sweep(_progress)
    print(f"removed {len(removed)} objects left by dead callpath runs" + "".join(f"\n  {r}" for r in removed))
    return 0


def _interrupted() -> str:
    """The interrupt message, true to what this process created and removed."""
    from .probes import runstate

    left = runstate.leftover()
    if left:
        return ("interrupted; left behind: " + ", ".join(f"{k} {v}" for k, v in left)
                + " (`callpath cleanup` removes them)")
    if runstate.created():
        return f"interrupted; all {runstate.created()} objects this run created on the host were removed"
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 bad input)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "-- CMD ...": the command to record around; argparse would mix it with SPECs
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    if command:
        if args.cmd not in ("verify", "record"):
            parser.error("'-- CMD' is only for verify and record")
        args.command = command
    if not args.cmd:
        parser.print_help()
        return 2
    # SIGTERM/SIGHUP end the run like Ctrl-C, so every cleanup path runs: the lab
    # VM (vng and its QEMU) is killed, probes detached, namespaces removed
    import signal

    def _as_interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, _as_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _dispatch(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_export(args) -> int:
    from .analysis.perfetto import export_trace
    from .analysis.trace import read_trace

    done = export_trace(read_trace(args.trace), args.perfetto)
    print(f"{done['path']}: {done['slices']} call slices on {done['threads']} thread tracks, {done['flows']} packet flow arrows")
    return 0


def _dispatch(args) -> int:
    from .analysis.spec import SpecError
    from .analysis.textsafe import terminal
    from .analysis.trace import TraceError
    from .outputs import OutputError

    handlers = {"verify": cmd_verify, "record": cmd_record, "report": cmd_report, "kernels": cmd_kernels,
                "lint": cmd_lint, "convert": cmd_convert, "export": cmd_export, "cleanup": cmd_cleanup}
    try:
        return handlers[args.cmd](args)
    except (SpecError, TraceError, OutputError) as err:
        print(f"callpath: error: {terminal(err)}", file=sys.stderr)
        return 2
    except ValueError as err:
        if type(err).__name__ != "FilterError":  # probes.filters: a --netns/--dev/--pid naming nothing
            raise
        print(f"callpath: error: {terminal(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"callpath: {_interrupted()}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for every known failure kind
        known = ("ClusterError", "RecordError", "ProbeError", "LabError", "WorkloadError", "KernelAccessError", "BtfError", "WorkloadTerminated",
                 "FieldError", "SessionError", "RunStateError", "StreamError")
        if type(err).__name__ in known:
            print(f"callpath: error: {terminal(err)}", file=sys.stderr)
            return 1
        if isinstance(err, OSError):  # a path or permission: one line naming the file
            where = f"{err.filename}: " if err.filename else ""
            print(f"callpath: error: {terminal(where + (err.strerror or str(err)))}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
