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
from .loader import Recorder
from .modindex import documented_modules, fix_command, index_or_none, modules_to_load
from .plan import MODULE_NOT_LOADED, build_plan


class RecordError(RuntimeError):
    """Recording cannot start here (not root, no kprobes, nothing to probe)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj):
    return asdict(obj) if is_dataclass(obj) else obj


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
) -> Path:
    """Probe the functions of ``specs`` while traffic flows; write the trace.

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

    Returns:
        the Parquet path.

    Raises:
        RecordError: not root, no kprobes, or nothing traceable.
        probes.loader.ProbeError: compile/attach failure.
        probes.workload.WorkloadError: a workload could not run.
    """
    from .workload import available_workloads, run_workload  # pyroute2 only needed here

    check_can_record()
    started = _now()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    meta: dict = {"kernel": kernel.kernel_release(), "host": socket.gethostname(), "where": where,
                  "specs": [s.source for s in specs], "started": started, "mechanism": "kprobe"}
    once: list[tuple[list[tuple], str]] = []  # (rows, mechanism) of run-once code
    try:
        with contextlib.ExitStack() as cleanup:
            tracefs = cleanup.enter_context(kernel.mounted_tracefs())
            index = index_or_none(meta["kernel"], progress)
            if tracefs:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                once.extend(_capture_run_once(specs, tracefs, meta, cleanup, progress, Path(out).parent, boot_graph,
                                              index))
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
            n_probe = len(plan.probed())
            if not n_probe:
                raise RecordError("no documented function is traceable on this kernel: nothing to probe")
            statuses = {}
            for fp in plan.functions.values():
                statuses[fp.status] = statuses.get(fp.status, 0) + 1
            progress("plan: " + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())))
            results = []
            with Recorder(plan, ringbuf_pages=ringbuf_pages, progress=progress) as rec:
                meta["attach_failed"] = rec.attach.failed
                t0 = time.monotonic()
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
                    names = workloads or list(available_workloads())
                    for name in names:
                        progress(f"workload {name}: starting")
                        res = run_workload(name, packets=packets, progress=lambda m, n=name: progress(f"workload {n}: {m}"))
                        d = _jsonable(res)
                        d["description"] = available_workloads()[name].description
                        results.append(d)
                meta["recorded_s"] = round(time.monotonic() - t0, 3)
            meta["workloads"] = results
            meta["lost"] = rec.lost
            meta["modules_arrived"] = rec.arrived
            _settle_late_modules(plan)
            meta["plan"] = plan.to_dict()
            # pandas/pyarrow are imported only now: importing them costs tens of
            # seconds under TCG emulation, better spent after the recording
            from ..analysis.trace import Trace, concat_events, events_from_rows, write_trace  # noqa: PLC0415

            id_to_name = plan.slot_names()
            probe_events = events_from_rows(rec.rows, id_to_name)
            sites = plan.site_slots()
            if sites and len(probe_events):  # entry-only kprobes at inline sites (analysis/instants.py)
                mech = probe_events["mechanism"].astype(object)
                mech[probe_events["func_id"].isin(list(sites)).to_numpy()] = "inline-site"
                probe_events["mechanism"] = mech
            events = concat_events(probe_events,
                                   *(events_from_rows(rows, mechanism=m) for rows, m in once))
            meta["events"] = len(events)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    meta["ended"] = _now()
    progress("writing the trace (Parquet)")
    path = write_trace(Trace(events=events, meta=meta), out)
    progress(f"trace written: {path} ({len(events)} events, {meta['lost']} lost)")
    return path
