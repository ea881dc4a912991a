"""Where a ``verify`` or ``lint`` runs: on this machine, or in a lab VM.

The command line (:mod:`callpath.cli`) parses and calls one of these:

* :func:`verify_on_host` -- probe the running kernel (:func:`probes.record.record`);
* :func:`verify_in_lab` -- boot a lab kernel under virtme-ng and run
  ``callpath record`` inside it, once per kernel (call it again with another
  :class:`~probes.labvm.LabKernel` and another ``out_dir`` for a second kernel);
* :func:`lint_on_host` / :func:`lint_in_lab` -- the static check.

What reaches virtme-ng is only what callpath makes itself: a staging
directory ``callpath-<pid>-lab-<random>`` (registered with
:mod:`probes.runstate`, removed on exit and swept after SIGKILL) is the one
read-write share; the documents are copied into it and the guest's commands
are a shell script written into it, so no user path or argument is ever on
vng's command line. Results are copied out of it into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import runstate


#: Exit status of ``callpath record``/``verify`` when the kernel lost events (the trace is complete
#: otherwise, and its metadata counts them per CPU).
LOST_STATUS = 3


class SessionError(RuntimeError):
    """A run cannot start here (e.g. not root) or its lab VM run failed."""


@dataclass
class Traffic:
    """What traffic flows while probes are attached.

    Attributes:
        workloads: built-in workload names; None for the default (all) or when
            the user brings traffic.
        packets: datagrams per traffic class (>= 1).
        duration: seconds of the user's own traffic to record (None: not).
        until_interrupt: record until Ctrl-C (host only).
        command: a command to record around (argv list), or None.
        ringbuf_pages: BPF ring buffer size in 4 KiB pages (power of two).
    """

    workloads: list[str] | None = None
    packets: int = 50
    duration: float | None = None
    until_interrupt: bool = False
    command: list[str] | None = None
    ringbuf_pages: int = 1024

    def argv(self) -> list[str]:
        """The ``callpath record`` options that ask for this traffic (``-- CMD`` last)."""
        argv = ["--packets", str(self.packets), "--ringbuf-pages", str(self.ringbuf_pages)]
        for w in self.workloads or []:
            argv += ["--workload", w]
        if self.duration:
            argv += ["--duration", str(self.duration)]
        if self.until_interrupt:
            argv.append("--until-interrupt")
        if self.command:
            argv += ["--", *self.command]
        return argv

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`probes.record.record` for this traffic."""
        return dict(workloads=self.workloads, packets=self.packets, duration=self.duration,
                    until_interrupt=self.until_interrupt, command=self.command or None,
                    ringbuf_pages=self.ringbuf_pages)


@dataclass
class Probing:
    """How the functions are probed and which events are kept (``--probes``, ``--aggregate``, filters).

    Attributes:
        probes: ``auto`` (fentry/fexit where a function allows it, kprobe/kretprobe
            otherwise), ``kprobe`` or ``fentry``.
        aggregate: count in BPF maps instead of streaming events.
        netns: ``--netns``: a name under /run/netns, a path, or an inode number.
        dev: ``--dev``: an interface name (in ``netns``, else in callpath's own netns).
        pid: ``--pid``: a process id (its thread group is kept).
        convert_after: ``--convert-after``: Parquet is written after the run, not during it.
        drain: ``--drain``: ``normal``, ``yield`` or ``defer`` (:mod:`probes.drainsched`).
    """

    probes: str = "auto"
    aggregate: bool = False
    netns: str | None = None
    dev: str | None = None
    pid: int | None = None
    convert_after: bool = False
    drain: str = "normal"

    def filtered(self) -> bool:
        return any(x is not None for x in (self.netns, self.dev, self.pid))

    def argv(self) -> list[str]:
        """The ``callpath record`` options for the lab guest (filters are refused there: :meth:`check_lab`)."""
        return (["--probes", self.probes] + (["--aggregate"] if self.aggregate else [])
                + (["--convert-after"] if self.convert_after else [])
                + (["--drain", self.drain] if self.drain != "normal" else []))

    def check_lab(self) -> None:
        """Raise :class:`SessionError` when filters are asked for a lab VM run."""
        if self.filtered():
            given = ", ".join(f"--{k} {v}" for k, v in (("netns", self.netns), ("dev", self.dev), ("pid", self.pid))
                              if v is not None)
            raise SessionError(f"{given}: filters name namespaces, devices and processes of the probed machine; "
                               "the lab VM's do not exist before it boots: use --host or `callpath record`")

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`probes.record.record`; resolves the filters now.

        Raises:
            probes.filters.FilterError: a filter names no namespace, device or process (one line).
        """
        filters = None
        if self.filtered():
            from .filters import resolve_filters  # noqa: PLC0415

            filters = resolve_filters(netns=self.netns, dev=self.dev, pid=self.pid)
        return dict(probes=self.probes, aggregate=self.aggregate, filters=filters, convert_after=self.convert_after,
                    drain=self.drain)


def needs_root(host: bool) -> None:
    """Refuse, before any work, what cannot run without root.

    Raises:
        SessionError: not root; the message says why (kprobes on the host;
            the lab VM boots QEMU over this machine's files and modules).
    """
    if os.geteuid() == 0:
        return
    if host:
        why = "probing the running kernel attaches kprobes and creates network namespaces"
    else:
        why = ("the lab VM boots QEMU over this machine's root filesystem and kernel modules, "
               "and probes with kprobes inside it")
    raise SessionError(f"needs root: {why}; run with sudo (`callpath lint` and `callpath report` do not need root)")


def sweep(progress) -> None:
    """Remove what dead callpath runs left (namespaces, mounts, lab VMs ...)."""
    removed = runstate.sweep(progress)
    if removed:
        progress(f"removed {len(removed)} objects left by dead runs")


def verify_on_host(specs, trace_path: Path, traffic: Traffic, progress, load_modules: bool = False,
                   debuginfo: list[str] | None = None, probing: Probing | None = None) -> Path:
    """Record on the running kernel into ``trace_path``; returns it.

    ``load_modules``: load the modules that define documented functions first
    (``--load-modules``); else none is loaded unasked. ``probing``: probe kind,
    counting mode and filters (default: :class:`Probing`).

    Raises:
        probes.record.RecordError, probes.loader.ProbeError, probes.workload.WorkloadError,
        probes.filters.FilterError.
    """
    from . import kernel
    from .record import record

    options = (probing or Probing()).kwargs()  # filters resolved before anything is probed
    progress(f"probing the running kernel {kernel.kernel_release()}")
    return record(specs, trace_path, where="running kernel", load_modules=load_modules, progress=progress,
                  debuginfo=debuginfo, **traffic.kwargs(), **options)


def boot_options(specs, lab, progress) -> str | None:
    """Kernel options that record the boot call graph of the documents' boot-time roots, or None."""
    from . import kernel
    from .boottrace import boot_roots, graph_cmdline, read_init_text
    from .modindex import index_or_none

    init_text = read_init_text(f"/boot/System.map-{lab.release}")
    if not init_text:  # Debian's System.map is a stub: use the running kernel's
        try:
            init_text = kernel.read_kallsyms()[2]
        except kernel.KernelAccessError:
            init_text = set()
    # built (or read from the cache) here on the host: the guest then reads the cache
    roots = boot_roots(specs, init_text, index_or_none(lab.release, progress))
    if not roots:
        return None
    progress(f"boot-time paths {', '.join(roots)}: booting with the function_graph tracer on them")
    return graph_cmdline(roots)


def _stage_specs(spec_paths: list[Path], stage: Path) -> list[Path]:
    """Copy the documents into ``stage/specs/`` (numbered, safe names); return the copies."""
    d = stage / "specs"
    d.mkdir()
    copies = []
    for i, src in enumerate(spec_paths):
        suffix = "".join(c for c in Path(src).suffix if c.isalnum() or c == ".")[:16]
        dst = d / f"{i:03d}{suffix}"
        shutil.copyfile(src, dst)
        copies.append(dst)
    return copies


def _write_job(stage: Path, lines: list[str]) -> list[str]:
    """Write the guest's shell script into ``stage``; return the argv that runs it."""
    job = stage / "job.sh"
    job.write_text("set -e\n" + "\n".join(lines) + "\n")
    return ["/bin/sh", str(job)]


def _callpath_argv(*args: str) -> list[str]:
    return [sys.executable, "-u", "-m", "callpath", *args]


def verify_in_lab(lab, spec_paths: list[Path], out_dir: Path, traffic: Traffic, progress,
                  timeout_s: float = 1500, specs=None, debuginfo: list[str] | None = None,
                  probing: Probing | None = None) -> Path:
    """Record in a lab VM on ``lab``'s kernel; the trace and raw ftrace text land in ``out_dir``.

    Args:
        lab: a :class:`probes.labvm.LabKernel`.
        spec_paths: the documents (any path: they are copied, never passed to vng).
        out_dir: existing directory for ``trace.parquet`` (+ ``trace.meta.json``,
            ``boot-graph.txt``, ``module-init-*.txt``); one per kernel.
        traffic: what flows while probing (``until_interrupt`` is refused).
        progress: callable taking one status line.
        timeout_s: give up (and kill the VM) after this many seconds.
        specs: the documents already read (else read from ``spec_paths``).
        debuginfo: folders with DWARF (``--debuginfo``), searched on the host
            before booting; the inline sites found reach the guest as a file
            (:func:`probes.inline.prepare_for_lab`).
        probing: probe kind and counting mode, passed to the guest; filters are refused.

    Returns:
        the trace path ``out_dir/trace.parquet``; its metadata names the
        documents by their host paths.

    Raises:
        SessionError: ``until_interrupt`` or filters, or the lab VM run failed.
        probes.labvm.LabError: vng missing, unsafe option, timeout.
    """
    from ..analysis.readers import read_spec
    from .boottrace import save_graph_script
    from .labvm import run_in_lab

    if traffic.until_interrupt:
        raise SessionError("--until-interrupt cannot be used in the lab VM (no terminal); use --duration")
    probing = probing or Probing()
    probing.check_lab()
    spec_paths = [Path(p).resolve() for p in spec_paths]
    if specs is None:
        specs = [read_spec(p) for p in spec_paths]
    append = boot_options(specs, lab, progress)
    stage = runstate.make_temp_dir("lab")
    try:
        copies = _stage_specs(spec_paths, stage)
        trace = stage / "trace.parquet"
        # the lab VM is callpath's own: load the modules the documents need before planning
        record = ["record", *map(str, copies), "--out", str(trace), "--load-modules",
                  "--where", f"lab VM, virtme-ng, QEMU TCG, kernel {lab.release}"]
        from .inline import prepare_for_lab  # noqa: PLC0415

        handover = prepare_for_lab(specs, lab.release, stage, debuginfo or [], progress)
        lines = [handover] if handover else []  # the module index: run_in_lab hands it over
        if append:
            graph = stage / "boot-graph.txt"
            record += ["--boot-graph", str(graph)]
            lines.append(save_graph_script(shlex.quote(str(graph))))
        lines.append("exec " + shlex.join(_callpath_argv(*record, *probing.argv(), *traffic.argv())))
        rc = run_in_lab(lab, _write_job(stage, lines), [stage], progress=progress, timeout_s=timeout_s,
                        append=append)
        # exit status 3: the guest's record lost events; the trace is complete and says how many
        if rc not in (0, LOST_STATUS) or not trace.exists():
            raise SessionError(f"the lab VM run failed (exit status {rc}); see the [lab] lines above")
        return _copy_results(stage, out_dir, [str(p) for p in spec_paths])
    finally:
        runstate.remove_temp_dir(stage)


def _copy_results(stage: Path, out_dir: Path, sources: list[str]) -> Path:
    """Trace (its metadata naming the host's documents) and raw ftrace text from ``stage`` into ``out_dir``.

    The trace is copied a row group at a time (bounded memory) into a staging
    file and renamed over ``out_dir/trace.parquet`` only when complete."""
    from ..analysis.trace import copy_trace, read_meta
    from ..outputs import staged_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    for raw in [stage / "boot-graph.txt", *sorted(stage.glob("module-init-*.txt"))]:
        if raw.is_file():
            shutil.copyfile(raw, out_dir / raw.name)
    meta = read_meta(stage / "trace.parquet")
    meta["specs"] = sources
    with staged_dir(out_dir) as tmp:
        copy_trace(stage / "trace.parquet", tmp / "trace.parquet", meta)
    return out_dir / "trace.parquet"


def lint_on_host(specs, progress, debuginfo: list[str] | None = None) -> dict:
    """Lint against the running kernel, changing nothing: no module is loaded.

    Functions of modules that are not loaded are judged from what the
    kernel's files say (:func:`probes.kernel.module_status`); see
    :func:`probes.lint.lint`.
    """
    return _lint_here(specs, progress, load=False, debuginfo=debuginfo)


def _lint_here(specs, progress, load: bool, debuginfo: list[str] | None = None) -> dict:
    from . import kernel
    from .btf import BtfError, load_kernel_btf
    from .lint import lint
    from .modindex import documented_modules, index_or_none, modules_to_load
    from .plan import build_plan

    index = index_or_none(kernel.kernel_release(), progress)
    syms = kernel.load_symbols()
    # in our own lab VM, the modules the documents need (from the index); on the host, none
    wanted = modules_to_load(specs, index, syms.text, syms.clones) if load else []
    with kernel.modules_loaded(wanted, progress) as modules:
        if wanted:
            syms = kernel.load_symbols()
        try:
            btf = load_kernel_btf(documented_modules(specs, syms.text, syms.clones))
        except BtfError as err:
            progress(f"no BTF: {err}; argument names are not checked")
            btf = None
        from .inline import discover  # noqa: PLC0415

        facts = discover(specs, syms.text, index, syms.release, debuginfo or [], progress=progress)
        plan = build_plan(specs, syms, btf, max_funcs=10**6, index=index, inline=facts)
        result = lint(specs, plan, syms.traceable_known, modules)
        result["inline_note"] = facts.note()
        return result


def lint_in_guest(specs, progress, debuginfo: list[str] | None = None) -> dict:
    """Lint inside the lab VM: the guest is callpath's own, so the modules that define
    documented functions are loaded first (their functions then appear in kallsyms and BTF)."""
    return _lint_here(specs, progress, load=True, debuginfo=debuginfo)


def lint_in_lab(lab, spec_paths: list[Path], progress, timeout_s: float = 1500, sources: list[str] | None = None,
                debuginfo: list[str] | None = None, specs=None) -> dict:
    """Lint the documents against ``lab``'s kernel in a lab VM; returns :func:`probes.lint.lint`'s result.

    ``sources`` (default: the paths as given) name the documents in the result
    instead of the guest's copies.

    Raises:
        SessionError: the lab VM run produced no result.
        probes.labvm.LabError: vng missing, unsafe option, timeout.
    """
    from .labvm import run_in_lab
    from .modindex import index_or_none

    index_or_none(lab.release, progress)  # built here on the host; the guest reads the cache
    sources = sources or [str(p) for p in spec_paths]
    stage = runstate.make_temp_dir("lint")
    try:
        copies = _stage_specs([Path(p).resolve() for p in spec_paths], stage)
        out = stage / "lint.json"
        handover = None
        if specs is not None:
            from .inline import prepare_for_lab  # noqa: PLC0415

            handover = prepare_for_lab(specs, lab.release, stage, debuginfo or [], progress)
        argv = _callpath_argv("lint", "--host", "--in-lab-guest", "--json", "--output", str(out), *map(str, copies))
        lines = [*([handover] if handover else []), "exec " + shlex.join(argv)]
        rc = run_in_lab(lab, _write_job(stage, lines), [stage], progress=progress,
                        timeout_s=timeout_s)
        if not out.exists():
            raise SessionError(f"the lab VM run failed (exit status {rc}); see the [lab] lines above")
        result = json.loads(out.read_text())
    finally:
        runstate.remove_temp_dir(stage)
    # name documents as the user gave them, not by the guest's copies
    for doc, source in zip(result["documents"], sources):
        doc["source"] = source
        for f in doc["functions"]:
            f["where"] = [source + ":" + w.rsplit(":", 1)[1] for w in f["where"]]
    return result
