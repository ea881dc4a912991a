"""The ``callpath`` command line: verify, record, report, kernels.

``main(argv=None) -> int`` can be called from tests. Errors are one line on
stderr, never a traceback; progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__

EXAMPLES = """\
examples:
  callpath verify                                 # shipped specs, built-in traffic, report in callpath-report/
  callpath verify specs/macvlan-newlink-xmit.txt --workload macvlan --out /tmp/mv
  callpath verify --kernel 6.1.0-56-amd64         # pick the lab kernel
  callpath verify --host --duration 30            # this kernel; record 30 s of your own traffic
  sudo callpath record specs/ --out t.parquet -- ./my-traffic.sh
  callpath report callpath-report/trace.parquet --out /tmp/again
  callpath lint specs/*                           # static check against the running kernel
  callpath convert specs/veth-macvlan-notes.md    # into callpath's own TOML format
  callpath kernels                                # lab kernels installed
"""


def _progress(msg: str) -> None:
    print(f"callpath: {msg}", file=sys.stderr, flush=True)


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
    where.add_argument("--kernel", metavar="RELEASE", help="lab VM kernel release (default: newest installed with headers)")
    where.add_argument("--host", action="store_true", help="probe the running kernel (needs root and kprobes)")
    v.add_argument("--json", action="store_true", help="print the report JSON on stdout instead of the summary")
    v.add_argument("--lab-timeout", type=float, default=1500, metavar="S", help="give up on the lab VM after S seconds")
    _add_traffic_args(v)

    r = sub.add_parser("record", help="record a trace on the running kernel (root, kprobes)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("specs", nargs="*", metavar="SPEC", help="documents or directories (default: the shipped specs/)")
    r.add_argument("--out", required=True, metavar="TRACE.parquet", help="trace file to write")
    r.add_argument("--where", default="", help=argparse.SUPPRESS)
    r.add_argument("--boot-graph", metavar="FILE", help=argparse.SUPPRESS)
    r.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)
    _add_traffic_args(r)

    rp = sub.add_parser("report", help="analyse a saved trace again (no root needed)")
    rp.add_argument("trace", metavar="TRACE", help="trace.parquet, or a report directory holding one")
    rp.add_argument("--spec", action="append", metavar="SPEC", help="documents to check (default: those recorded in the trace)")
    rp.add_argument("--out", metavar="DIR", help="report directory (default: the trace's directory)")
    rp.add_argument("--json", action="store_true", help="print the report JSON on stdout")

    li = sub.add_parser("lint", help="check documents against a kernel: no traffic, no probes",
                        epilog="examples:\n  callpath lint specs/*\n  callpath lint specs/ --kernel 6.1.0-56-amd64 --json\n\n"
                        "exit status: 0 all documented functions exist, 1 some are absent, 2 bad input",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    li.add_argument("specs", nargs="*", metavar="SPEC", help="documents or directories (default: the shipped specs/)")
    lwhere = li.add_mutually_exclusive_group()
    lwhere.add_argument("--kernel", metavar="RELEASE", help="lint against a lab kernel (boots the lab VM, about 1 minute)")
    lwhere.add_argument("--host", action="store_true", help="lint against the running kernel (the default)")
    li.add_argument("--json", action="store_true", help="print JSON for machines")
    li.add_argument("--output", metavar="FILE", help=argparse.SUPPRESS)

    cv = sub.add_parser("convert", help="convert documents into callpath's own TOML spec format",
                        epilog="examples:\n  callpath convert specs/macvlan-newlink-xmit.txt > macvlan.toml\n"
                        "  callpath convert specs/ --out-dir converted/\n  callpath convert --schema",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("specs", nargs="*", metavar="DOC", help="documents to convert")
    cv.add_argument("--out-dir", metavar="DIR", help="write DIR/<name>.toml per document instead of stdout")
    cv.add_argument("--schema", action="store_true", help="print the format's JSON Schema and exit")

    sub.add_parser("kernels", help="list installed lab kernels")
    return parser


def _emit_report(trace_path: Path, specs, out: Path, as_json: bool) -> int:
    from .analysis.report import summary_lines, write_report
    from .analysis.trace import read_trace

    trace = read_trace(trace_path)
    _progress("analysing: call trees, conformance, latency")
    report = write_report(trace, specs, out)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"kernel {report['kernel']} ({report['where'] or 'running kernel'}): {report['events']} events, {report['lost']} lost")
    print("observed/checkable per path:")
    for line in summary_lines(report):
        print("  " + line)
    print(f"report: {out / 'report.md'} (JSON: {out / 'report.json'}, trace: {trace_path})")
    return 0


def _default_workloads(args, specs) -> None:
    """Without --workload and user traffic, run the workloads the documents' paths name."""
    if args.workload or args.duration or args.until_interrupt or [c for c in args.command if c != "--"]:
        return
    wanted = [w for s in specs for p in s.paths for w in p.workloads]
    args.workload = list(dict.fromkeys(wanted)) or None


def _traffic_kwargs(args) -> dict:
    command = [c for c in args.command if c != "--"]
    return dict(workloads=args.workload, packets=args.packets, duration=args.duration,
                until_interrupt=args.until_interrupt, command=command or None, ringbuf_pages=args.ringbuf_pages)


def _traffic_argv(args) -> list[str]:
    argv = ["--packets", str(args.packets), "--ringbuf-pages", str(args.ringbuf_pages)]
    for w in args.workload or []:
        argv += ["--workload", w]
    if args.duration:
        argv += ["--duration", str(args.duration)]
    command = [c for c in args.command if c != "--"]
    if command:
        argv += ["--", *command]
    return argv


def _display_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (for file:line)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def cmd_verify(args) -> int:
    from .analysis.readers import expand_spec_args, read_spec
    from .probes import kernel

    given = expand_spec_args(args.specs)
    paths = [p.resolve() for p in given]  # the lab VM needs absolute paths
    specs = [read_spec(_display_path(p)) for p in given]
    _default_workloads(args, specs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trace_path = out / "trace.parquet"
    t0 = time.monotonic()
    if args.host or (not args.kernel and kernel.has_kprobes()):
        from .probes.record import record

        _progress(f"probing the running kernel {kernel.kernel_release()}")
        record(specs, trace_path, where="running kernel", progress=_progress, **_traffic_kwargs(args))
    else:
        from .probes.labvm import choose_kernel, run_in_lab

        if args.until_interrupt:
            raise SystemExit("callpath: --until-interrupt cannot be used in the lab VM (no terminal); use --duration")
        from .probes.boottrace import boot_roots, graph_cmdline, modules_of_release, read_init_text

        lab = choose_kernel(args.kernel)
        why = "requested" if args.kernel else f"the running kernel {kernel.kernel_release()} has no kprobes"
        _progress(f"probing in a lab VM on Debian kernel {lab.release} ({why})")
        init_text = read_init_text(f"/boot/System.map-{lab.release}")
        if not init_text:  # Debian's System.map is a stub: use the running kernel's
            try:
                init_text = kernel.read_kallsyms()[2]
            except kernel.KernelAccessError:
                init_text = set()
        roots = boot_roots(specs, init_text, modules_of_release(lab.release))
        append = graph_cmdline(roots) if roots else None
        if roots:
            _progress(f"boot-time paths {', '.join(roots)}: booting with the function_graph tracer on them")
        trace_path.unlink(missing_ok=True)
        import shlex

        from .probes.boottrace import save_graph_script

        graph_file = out / "boot-graph.txt"
        graph_file.unlink(missing_ok=True)
        record_argv = [sys.executable, "-u", "-m", "callpath", "record", *map(str, paths), "--out", str(trace_path),
                       "--where", f"lab VM, virtme-ng, QEMU TCG, kernel {lab.release}", *_traffic_argv(args)]
        if roots:
            record_argv[5:5] = ["--boot-graph", str(graph_file)]
            inner = ["sh", "-c", save_graph_script(shlex.quote(str(graph_file))) + "; exec " + shlex.join(record_argv)]
        else:
            inner = record_argv
        rc = run_in_lab(lab, inner, [out], progress=_progress, timeout_s=args.lab_timeout, append=append)
        if rc != 0 or not trace_path.exists():
            _progress(f"the lab VM run failed (exit status {rc}); see the [lab] lines above")
            return 1
    _progress(f"recorded in {time.monotonic() - t0:.0f} s")
    return _emit_report(trace_path, specs, out, args.json)


def cmd_record(args) -> int:
    from .analysis.readers import read_specs
    from .probes.record import record

    if args.print_bpf:
        from .bpf import PROGRAM

        print(PROGRAM.read_text())
        return 0
    specs = read_specs(args.specs)
    record(specs, Path(args.out), where=args.where, boot_graph=args.boot_graph, progress=_progress,
           **_traffic_kwargs(args))
    return 0


def cmd_report(args) -> int:
    from .analysis.readers import read_specs
    from .analysis.trace import read_trace

    trace_path = Path(args.trace)
    if trace_path.is_dir():
        trace_path = trace_path / "trace.parquet"
    trace = read_trace(trace_path)
    specs = read_specs(args.spec or trace.meta.get("specs", []))
    out = Path(args.out) if args.out else trace_path.parent
    return _emit_report(trace_path, specs, out, args.json)


def cmd_lint(args) -> int:
    from .analysis.readers import expand_spec_args, read_spec
    from .probes import kernel
    from .probes.lint import lint, render_text

    given = expand_spec_args(args.specs)
    specs = [read_spec(_display_path(p)) for p in given]
    if args.kernel:
        import tempfile

        from .probes.labvm import choose_kernel, run_in_lab

        lab = choose_kernel(args.kernel)
        _progress(f"linting against lab kernel {lab.release} (booting the lab VM)")
        with tempfile.TemporaryDirectory(prefix="callpath-lint-") as tmp:
            out = Path(tmp) / "lint.json"
            inner = [sys.executable, "-u", "-m", "callpath", "lint", "--host", "--json", "--output", str(out),
                     *[str(p.resolve()) for p in given]]
            rc = run_in_lab(lab, inner, [Path(tmp)], progress=_progress)
            if not out.exists():
                _progress(f"the lab VM run failed (exit status {rc})")
                return 1
            result = json.loads(out.read_text())
        # report sources as the user gave them, not the guest's absolute paths
        for doc, spec in zip(result["documents"], specs):
            doc["source"] = spec.source
            for f in doc["functions"]:
                f["where"] = [spec.source + ":" + w.rsplit(":", 1)[1] for w in f["where"]]
    else:
        from .probes.btf import BtfError, load_kernel_btf
        from .probes.plan import build_plan
        from .probes.record import DRIVER_MODULES

        with kernel.modules_loaded(DRIVER_MODULES if os.geteuid() == 0 else [], _progress) as modules:
            syms = kernel.load_symbols()
            try:
                btf = load_kernel_btf(DRIVER_MODULES)
            except BtfError as err:
                _progress(f"no BTF: {err}; argument names are not checked")
                btf = None
            plan = build_plan(specs, syms, btf, max_funcs=10**6)
            result = lint(specs, plan, syms.traceable_known, modules)
    text = json.dumps(result, indent=2) if args.json else render_text(result)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 1 if result["absent"] else 0


def cmd_convert(args) -> int:
    from .analysis import ownspec
    from .analysis.readers import expand_spec_args, read_spec

    if args.schema:
        print(json.dumps(ownspec.schema(), indent=2))
        return 0
    if not args.specs:
        raise SystemExit("callpath convert: give at least one document (or --schema)")
    for p in expand_spec_args(args.specs):
        spec = read_spec(_display_path(p))
        for w in spec.warnings:
            _progress(f"warning: {w}")
        text = ownspec.dumps(spec)
        if args.out_dir:
            target = Path(args.out_dir) / (p.stem + ".toml")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            _progress(f"{p} -> {target} ({len(spec.paths)} paths, {sum(len(x.steps) for x in spec.paths)} steps)")
        else:
            print(text)
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


def _dispatch(args) -> int:
    from .analysis.spec import SpecError
    from .analysis.trace import TraceError

    handlers = {"verify": cmd_verify, "record": cmd_record, "report": cmd_report, "kernels": cmd_kernels,
                "lint": cmd_lint, "convert": cmd_convert}
    try:
        return handlers[args.cmd](args)
    except (SpecError, TraceError) as err:
        print(f"callpath: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("callpath: interrupted; probes, namespaces and links were removed", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for every known failure kind
        known = ("RecordError", "ProbeError", "LabError", "WorkloadError", "KernelAccessError", "BtfError", "WorkloadTerminated")
        if type(err).__name__ in known:
            print(f"callpath: error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
