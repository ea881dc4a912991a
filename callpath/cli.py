"""The ``callpath`` command line: verify, record, report, kernels.

``main(argv=None) -> int`` can be called from tests. Errors are one line on
stderr, never a traceback; progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .parser import EXIT_LOST, build_parser  # noqa: F401 - build_parser re-exported for tests

def _progress(msg: str) -> None:
    from .analysis.textsafe import terminal

    print(f"callpath: {terminal(msg)}", file=sys.stderr, flush=True)


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

    return Probing(probes=args.probes, aggregate=args.aggregate, netns=args.netns, dev=args.dev, pid=args.pid,
                   convert_after=args.convert_after, drain=args.drain)


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
        from .bpf import program_source

        print(program_source())
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
