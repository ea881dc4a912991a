"""Record a trace on the running kernel: plan, load, attach, run traffic, write Parquet.

This is what ``callpath record`` runs (and what ``callpath verify`` runs inside
the lab VM). It needs root and a kernel with kprobes.

Traffic comes from one of:

* built-in workloads (:mod:`probes.workload`), the default;
* a command the user gives (``-- CMD ...``), recorded from start to exit;
* a duration (``--duration S``) or Ctrl-C (``--until-interrupt``) while the user
  sends traffic of their own.

Everything is undone on exit, success or not: probes detached, workload
namespaces and links removed, modules this run loaded unloaded, tracefs
unmounted if this run mounted it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..analysis.spec import Spec
from . import boottrace, kernel
from .btf import BtfError, load_kernel_btf
from .fields import resolve_fields
from .modindex import documented_modules, fix_command, index_or_none, modules_to_load
from .plan import MODULE_NOT_LOADED, build_plan


class RecordError(RuntimeError):
    """Recording cannot start here (not root, no kprobes, nothing to probe)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj):
    return asdict(obj) if is_dataclass(obj) else obj


def _fields_of(obj) -> dict:
    """A filters object (dataclass, named tuple, or plain object) as a dict; {} for None."""
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj):
        return asdict(obj)
    return obj._asdict() if hasattr(obj, "_asdict") else dict(vars(obj))


def check_can_record() -> None:
    """Raise :class:`RecordError` with the reason when this kernel cannot be probed here."""
    if os.geteuid() != 0:
        raise RecordError("recording needs root (kprobes, namespaces): run with sudo, or use `callpath verify` with a lab VM")
    if not kernel.has_kprobes():
        raise RecordError(
            f"kernel {kernel.kernel_release()} has no kprobe support (/sys/bus/event_source/devices/kprobe missing; "
            "CONFIG_KPROBES not set): use `callpath verify` (lab VM) instead"
        )


def _capture_run_once(specs, tracefs, meta, cleanup, progress, raw_dir: Path,
                      boot_graph: str | None = None, index=None) -> list[tuple[list[tuple], str]]:
    """Evidence for run-once code: the boot call graph, module init under kprobe events.

    The raw ftrace text is kept in ``raw_dir`` (``boot-graph.txt``,
    ``module-init-MODULE.txt``). Modules loaded here are unloaded when
    ``cleanup`` (an ExitStack) closes.
    """
    out = []
    graph = boottrace.capture_boot_graph(tracefs, boot_graph)
    if graph:
        rows, stats, text = graph
        if boot_graph is None or Path(boot_graph).resolve() != (raw_dir / "boot-graph.txt").resolve():
            (raw_dir / "boot-graph.txt").write_text(text)
        progress(f"boot-time function_graph: {stats['calls']} calls of {len(stats['functions'])} functions")
        meta["boot_graph"] = {"calls": stats["calls"], "functions": len(stats["functions"]),
                              "unmatched_closes": stats["unmatched_closes"]}
        out.append((rows, "function_graph"))
    init_paths = boottrace.module_init_paths(specs, index)
    if init_paths:
        text, _clones, _init = kernel.read_kallsyms()
        for module, functions in init_paths.items():
            cleanup.callback(kernel.unload_module, module)
            rows, notes, raw = boottrace.capture_module_init(tracefs, module, functions, text, progress, index)
            (raw_dir / f"module-init-{module}.txt").write_text(raw)
            progress(f"module init of {module}: {len(rows)} kprobe events" + (f" ({'; '.join(notes)})" if notes else ""))
            meta.setdefault("module_init", {})[module] = {"events": len(rows), "notes": notes}
            out.append((rows, "kprobe_events"))
    return out


def _settle_late_modules(plan) -> None:
    """After the run: functions whose module never arrived lose their slot and say so."""
    for fp in plan.functions.values():
        if fp.status == MODULE_NOT_LOADED:
            fp.func_id = None
            fp.reason = f"module {fp.module} not loaded during the run; {fix_command(fp.module)}"


def _inline_facts(specs, syms, index, debuginfo, progress):
    """DWARF facts on the documented functions kallsyms lacks (:func:`probes.inline.discover`), or None."""
    from .inline import discover  # noqa: PLC0415

    try:
        facts = discover(specs, syms.text, index, syms.release, debuginfo or [], progress=progress)
    except Exception as err:  # noqa: BLE001 - without DWARF everything works as before
        progress(f"inline sites not looked for: {err}")
        return None
    progress("inlining: " + facts.note())
    return facts


def _raise_terminated(signum, _frame):
    # unwind like Ctrl-C: probes detach, workload namespaces go, modules unload
    raise KeyboardInterrupt(f"signal {signum}")


def aggregate_meta(agg: dict, names: dict[int, str]) -> dict:
    """The Recorder's in-kernel counts (func ids = plan slots) with function names, for ``meta["aggregate"]``.

    ``agg`` has ``paths`` (``ids``, ``calls``, ``sum_ns``), ``order`` (``parent`` ids,
    ``children`` ids, ``calls``), ``hist`` (``func_id``, ``bucket``, ``count``) and the
    counters ``max_depth``, ``depth_overflow``, ``unmatched_returns``, ``map_full``, ``stale_frames``
    (:mod:`probes.aggread`); the result has the same shape with ``path``/``parent``/``children`` as name lists
    (``ids`` kept beside ``path``)
    and ``function`` for ``func_id`` (unknown ids become ``#ID``). Durations in ns.
    """
    def name(i) -> str:
        return names.get(int(i), f"#{int(i)}")

    out = {k: v for k, v in agg.items() if k not in ("paths", "order", "hist")}
    # ids (plan slots) stay beside the names: two inline sites of one function have one name, two slots
    out["paths"] = [{"path": [name(i) for i in p["ids"]], "ids": [int(i) for i in p["ids"]],
                     "calls": int(p["calls"]), "sum_ns": int(p["sum_ns"])} for p in agg.get("paths", [])]
    out["order"] = [{"parent": [name(i) for i in o["parent"]], "children": [name(i) for i in o["children"]],
                     "calls": int(o["calls"])} for o in agg.get("order", [])]
    out["hist"] = [{"function": name(h["func_id"]), "bucket": int(h["bucket"]), "count": int(h["count"])}
                   for h in agg.get("hist", [])]
    return out


def mechanism_summary(plan) -> str:
    """One line on how the probed functions were attached, e.g. ``fentry/fexit: 40, kprobe/kretprobe: 3``."""
    labels = {"fentry": "fentry/fexit", "kprobe": "kprobe/kretprobe", "inline-site": "inline-site kprobes"}
    counts: dict[str, int] = {}
    for fp in plan.functions.values():
        if fp.probe:
            counts[fp.probe] = counts.get(fp.probe, 0) + 1
    return ", ".join(f"{labels.get(k, k)}: {v}" for k, v in sorted(counts.items())) or "kprobe"


def lost_line(lost: int, per_cpu: list[int]) -> str:
    """``3 lost (CPU 1: 3)``: lost events and the CPUs that lost them."""
    cpus = ", ".join(f"CPU {c}: {n}" for c, n in enumerate(per_cpu or []) if n)
    return f"{lost} lost" + (f" ({cpus})" if lost and cpus else "")


def _run_traffic(workloads, packets, duration, until_interrupt, command, meta, progress) -> list[dict]:
    """Make the traffic while the probes are attached; returns the workloads' results.

    The Recorder prints its own live progress (events/s drained, lost) meanwhile.
    """
    from .workload import available_workloads, run_workload  # pyroute2 only needed here

    results = []
    if command:
        progress(f"running: {' '.join(command)}")
        rc = subprocess.run(command).returncode
        meta["command"] = {"argv": command, "exit_status": rc}
    elif duration or until_interrupt:
        progress(f"recording {'for %.0f s' % duration if duration else 'until Ctrl-C'}: send your traffic now")
        try:
            deadline = time.monotonic() + duration if duration else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            progress("Ctrl-C: stopping")
    else:
        for name in workloads or list(available_workloads()):
            progress(f"workload {name}: starting")
            res = run_workload(name, packets=packets, progress=lambda m, n=name: progress(f"workload {n}: {m}"))
            d = _jsonable(res)
            d["description"] = available_workloads()[name].description
            results.append(d)
    return results


def probe_and_stream(plan, stream, meta: dict, traffic, progress, ringbuf_pages: int = 1024,
                     probes: str = "auto", filters=None, aggregate: bool = False, recorder=None,
                     drain: str = "normal") -> None:
    """Attach the probes with ``stream`` as the Recorder's sink, run ``traffic()``, detach; fill ``meta``.

    ``traffic`` is a callable returning the workloads' results. ``recorder`` replaces
    :class:`probes.loader.Recorder` (tests). Sets ``meta`` keys ``mode``, ``probes``,
    ``filters``, ``attach_failed``, ``recorded_s``, ``workloads``, ``lost``,
    ``lost_per_cpu``, ``modules_arrived``, ``mechanism``, ``drain`` (policy and boosts:
    :mod:`probes.drainsched`), and ``aggregate`` in counting mode.
    """
    if recorder is None:
        from .loader import Recorder as recorder  # noqa: PLC0415, N813
    meta["mode"] = "aggregate" if aggregate else "events"
    meta["probes"] = probes
    meta["filters"] = {k: v for k, v in _fields_of(filters).items() if v not in (None, {}, ())}
    with recorder(plan, ringbuf_pages=ringbuf_pages, progress=progress, probes=probes, filters=filters,
                  aggregate=aggregate, sink=stream, drain=drain) as rec:
        meta["attach_failed"] = rec.attach.failed
        t0 = time.monotonic()
        meta["workloads"] = traffic()
        meta["recorded_s"] = round(time.monotonic() - t0, 3)
    meta["lost"] = int(rec.lost)
    meta["lost_per_cpu"] = [int(x) for x in (rec.lost_per_cpu or [])]
    meta["modules_arrived"] = rec.arrived
    meta["drain"] = {"policy": drain, "boosts": int(getattr(rec, "drain_boosts", 0))}
    meta["mechanism"] = mechanism_summary(plan)
    if aggregate:
        meta["aggregate"] = aggregate_meta(rec.aggregate or {}, plan.slot_names())
        progress(f"counted {sum(p['calls'] for p in meta['aggregate']['paths'])} calls on "
                 f"{len(meta['aggregate']['paths'])} distinct paths in the kernel")


def record(
    specs: list[Spec],
    out: str | Path,
    workloads: list[str] | None = None,
    packets: int = 50,
    duration: float | None = None,
    until_interrupt: bool = False,
    command: list[str] | None = None,
    ringbuf_pages: int = 1024,
    where: str = "",
    boot_graph: str | None = None,
    load_modules: bool = False,
    debuginfo: list[str] | None = None,
    progress=lambda m: None,
    probes: str = "auto",
    filters=None,
    aggregate: bool = False,
    convert_after: bool = False,
    drain: str = "normal",
) -> Path:
    """Probe the functions of ``specs`` while traffic flows; stream the trace to Parquet.

    Events go from the ring buffer to the Parquet file in row groups while the
    run goes on (:class:`probes.stream.TraceStream`): memory does not grow with
    the run's length. The trace is written in a staging folder beside ``out``
    and moved into place only when complete: a previous ``out`` stays until then.

    Args:
        specs: documents already read.
        out: Parquet path to write (``<out>.meta.json`` beside it).
        workloads: built-in workload names; None or [] when the user brings traffic.
        packets: datagrams per traffic class in each workload.
        duration: record for this many seconds (user traffic).
        until_interrupt: record until Ctrl-C (user traffic).
        command: run this command and record until it exits.
        ringbuf_pages: BPF ring buffer size in 4 KiB pages (power of two).
        where: a note on where this runs (``"lab VM"``), kept in the metadata.
        boot_graph: a file holding the boot-time function_graph trace, saved
            before Python started (lab VM); else tracefs is read if it has one.
        load_modules: load the modules that define documented functions
            (:func:`probes.modindex.modules_to_load`) before planning, and unload
            them at the end. Without it no module is loaded: functions of modules
            that arrive during the run (the user's command loads them) are
            attached on arrival, the others get the ``module-not-loaded`` verdict.
        debuginfo: folders with DWARF to search first (``--debuginfo``); the
            standard places and callpath's cache are always searched
            (:mod:`probes.debuginfo`): inlined functions are probed at their inline sites.
        progress: callable taking one status line.
        probes: ``auto`` (fentry/fexit where the function allows it, else
            kprobe/kretprobe), ``kprobe`` or ``fentry`` (see :class:`probes.loader.Recorder`).
        filters: a :class:`probes.filters.Filters` applied in the kernel, or None.
        aggregate: count in BPF maps instead of streaming events (``meta["aggregate"]``;
            the event table then holds only the evidence recorded without BPF).
        convert_after: keep the raw records on disk (40 bytes per event) and write
            Parquet only after the run, so the run spends no CPU on it
            (:class:`probes.stream.TraceStream` ``convert_during=False``).
        drain: ``normal`` (default: the ring buffer's drain thread at SCHED_OTHER) or
            ``yield`` (experimental: at SCHED_IDLE while it keeps up) or ``defer`` (events wait in the
            ring buffer until traffic pauses or it is half full); :mod:`probes.drainsched`.

    Returns:
        the Parquet path. Its metadata's ``lost`` (and ``lost_per_cpu``) count
        the events the kernel dropped.

    Raises:
        RecordError: not root, no kprobes, or nothing traceable.
        probes.loader.ProbeError: compile/attach failure.
        probes.workload.WorkloadError: a workload could not run.
        probes.stream.StreamError, callpath.outputs.OutputError: the trace cannot be written.
    """
    from ..outputs import staged_dir  # noqa: PLC0415

    check_can_record()
    out = Path(out)
    started = _now()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    meta: dict = {"kernel": kernel.kernel_release(), "host": socket.gethostname(), "where": where,
                  "specs": [s.source for s in specs], "started": started, "mechanism": "kprobe"}
    once: list[tuple[list[tuple], str]] = []  # (rows, mechanism) of run-once code
    stream = None
    try:
        with staged_dir(out.parent) as stage:  # the previous trace stays until this one is complete
            try:
                with contextlib.ExitStack() as cleanup:
                    plan = _plan(specs, out, meta, once, cleanup, boot_graph, load_modules, debuginfo, progress)
                    from .stream import TraceStream  # noqa: PLC0415 - pyarrow imported before the probes attach

                    stream = TraceStream(stage / out.name, names=plan.slot_names(), mechanism=plan,
                                         convert_during=not convert_after)
                    probe_and_stream(
                        plan, stream, meta,
                        lambda: _run_traffic(workloads, packets, duration, until_interrupt, command, meta, progress),
                        progress, ringbuf_pages=ringbuf_pages, probes=probes, filters=filters, aggregate=aggregate,
                        drain=drain)
                    _settle_late_modules(plan)
                    meta["plan"] = plan.to_dict()
                meta["ended"] = _now()
                progress(f"writing the rest of the trace ({stream.events - stream.written} events buffered)")
                stream.close(meta, once)
            except BaseException:
                if stream is not None:
                    stream.abort()
                raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    progress(f"trace written: {out} ({meta['events']} events, {lost_line(meta['lost'], meta['lost_per_cpu'])})")
    return out


def _plan(specs, out: Path, meta, once, cleanup, boot_graph, load_modules, debuginfo, progress):
    """Run-once evidence, symbols, modules, BTF, inline sites: the probe plan (``meta["plan"]`` too)."""
    tracefs = cleanup.enter_context(kernel.mounted_tracefs())
    index = index_or_none(meta["kernel"], progress)
    if tracefs:
        out.parent.mkdir(parents=True, exist_ok=True)
        once.extend(_capture_run_once(specs, tracefs, meta, cleanup, progress, out.parent, boot_graph, index))
    progress("reading kallsyms and available_filter_functions")
    syms = kernel.load_symbols()
    wanted = modules_to_load(specs, index, syms.text, syms.clones)
    if wanted and load_modules:
        progress(f"loading the modules that define documented functions: {', '.join(wanted)}")
        meta["modules"] = cleanup.enter_context(kernel.modules_loaded(wanted, progress))
        syms = kernel.load_symbols()
    elif wanted:
        progress(f"modules not loaded: {', '.join(wanted)}; their functions are attached if they arrive "
                 "during the run (--load-modules loads them first)")
    try:
        btf = load_kernel_btf(documented_modules(specs, syms.text, syms.clones))
    except BtfError as err:
        progress(f"no BTF ({err}); skb arguments unknown, latency limited")
        btf = None
    facts = _inline_facts(specs, syms, index, debuginfo, progress)
    plan = build_plan(specs, syms, btf, index=index, late_attach=True, tracking=True, inline=facts)
    meta["inline"] = {"checked": facts is not None, "note": facts.note() if facts else "",
                      "searched": dict(facts.searched) if facts else {}}
    plan.fields = resolve_fields(btf, syms.release)
    progress("kernel fields: " + ", ".join(f"{k} @{v['offset']}" for k, v in plan.fields.items())
             + f" ({next(iter(plan.fields.values()))['source']})")
    for rows, mechanism in once:
        for name in {r[-1] for r in rows}:
            if name in plan.functions and mechanism not in plan.functions[name].observed_by:
                plan.functions[name].observed_by.append(mechanism)
    meta["plan"] = plan.to_dict()
    if not plan.probed():
        raise RecordError("no documented function is traceable on this kernel: nothing to probe")
    statuses: dict[str, int] = {}
    for fp in plan.functions.values():
        statuses[fp.status] = statuses.get(fp.status, 0) + 1
    progress("plan: " + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())))
    return plan
