"""Evidence for code that runs once: boot-time ``__init`` functions and module init.

``net_dev_init`` (net/core/dev.c, ``subsys_initcall``) runs at boot and its code
is freed afterwards; a module's ``module_init`` function (``macvtap_init``,
drivers/net/macvtap.c) runs once while the module loads. Neither can be
probed after the fact, so:

* **boot**: the lab VM boots with ``ftrace=function_graph
  ftrace_graph_filter=FUNC trace_buf_size=8M trace_clock=global`` on the kernel
  command line (:func:`graph_cmdline`); the guest then reads the whole call
  graph of FUNC from tracefs (:func:`capture_boot_graph`) and switches the
  tracer off. Without ``trace_clock=global`` the late-boot clock switch wipes
  the buffer (measured on Debian 6.1).
* **module init**: kprobe events written to tracefs ``kprobe_events`` with the
  ``MODULE:function`` form, which the kernel arms when the module arrives
  (kernel/trace/trace_kprobe.c), on the init function and its documented
  callees, enabled and read in callpath's own tracefs instance; then
  ``modprobe`` (:func:`capture_module_init`).

Everything added to tracefs is registered with :mod:`probes.runstate` before it
is added and removed again, also on errors; the global tracer, buffer and
``tracing_on`` are left as found (the lab VM's boot options are callpath's own,
so there the boot tracer is switched off after reading).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from ..analysis.ftrace_text import ENTRY, RETURN, parse_function_graph, parse_kprobe_events
from ..analysis.spec import Spec
from .kernel import module_status

GRAPH_CMDLINE = "ftrace=function_graph ftrace_graph_filter={functions} trace_buf_size=8M trace_clock=global"
EVENT_GROUP = "callpath"
def read_init_text(system_map: str | Path) -> set[str]:
    """``__init`` functions of a kernel image from its System.map (``/boot/System.map-RELEASE``):
    text symbols between ``_sinittext`` and ``_einittext``. Empty when unreadable."""
    syms: list[tuple[int, str]] = []
    lo = hi = 0
    try:
        with open(system_map, encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                addr, typ, name = int(parts[0], 16), parts[1], parts[2]
                if name == "_sinittext":
                    lo = addr
                elif name == "_einittext":
                    hi = addr
                elif typ in "tT":
                    syms.append((addr, name))
    except OSError:
        return set()
    return {n for a, n in syms if lo <= a < hi} if lo and hi > lo else set()


def modules_of_release(release: str) -> set[str]:
    """Loadable module names of an installed kernel (``/lib/modules/RELEASE/modules.dep``)."""
    try:
        text = Path("/lib/modules", release, "modules.dep").read_text()
    except OSError:
        return set()
    return {Path(line.split(":", 1)[0]).name.split(".ko")[0] for line in text.splitlines() if ":" in line}


def boot_roots(specs: list[Spec], init_text: set[str], index=None) -> list[str]:
    """Root functions of documented paths that run at boot in the lab kernel.

    The lab kernel's own symbols are not readable before it boots (Debian ships a
    stub System.map), so a root counts as boot-time when ``init_text`` (the
    ``__init`` functions of a kernel we can read: the lab's System.map when real,
    else the running kernel's kallsyms) has it or it is named ``*_init`` -- unless
    a loadable module of the lab kernel defines it (``index``, the lab release's
    :class:`probes.modindex.ModuleIndex`: ``macvtap_init`` in Debian's 6.1 is
    module init, handled by :func:`capture_module_init`).
    """
    roots = []
    for spec in specs:
        for path in spec.paths:
            fn = next((s.function for s in path.steps if s.function), None)
            if not fn or fn in roots or (index is not None and index.modules_of(fn)):
                continue
            if fn in init_text or fn.endswith("_init"):
                roots.append(fn)
    return roots


def graph_cmdline(functions: list[str]) -> str:
    """Kernel command-line options that leave the boot call graph of ``functions`` in tracefs."""
    return GRAPH_CMDLINE.format(functions=",".join(functions))


def save_graph_script(target: str) -> str:
    """Shell lines that, first thing in the lab VM, copy the boot graph to ``target``
    and switch the tracer off: the graph hook slows every traced call (under
    TCG, Python's start-up doubles) until it is off."""
    return (
        "T=/sys/kernel/tracing; "
        'if [ "$(cat $T/current_tracer 2>/dev/null)" = function_graph ]; then '
        f"cat $T/trace > {target}; echo nop > $T/current_tracer; echo > $T/set_graph_function; echo > $T/trace; fi"
    )


def booted_with_our_graph(cmdline: str | None = None) -> bool:
    """True when the kernel command line (``/proc/cmdline``) holds callpath's own
    boot-graph options (:data:`GRAPH_CMDLINE`): the global tracer is then callpath's."""
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            return False
    opts = cmdline.split()
    ours = GRAPH_CMDLINE.split()
    return all(any(o == want or (want.endswith("{functions}") and o.startswith(want.split("{")[0]))
                   for o in opts) for want in ours)


def capture_boot_graph(tracefs: str | None, saved: str | Path | None = None,
                       cmdline: str | None = None) -> tuple[list[tuple], dict, str] | None:
    """The boot-time function_graph trace: from ``saved`` (written by
    :func:`save_graph_script`) or else read from tracefs.

    The global tracer is switched off (``nop``, ``set_graph_function`` and the
    buffer cleared) only when callpath's options booted the kernel
    (:func:`booted_with_our_graph`); another tool's or an administrator's
    function_graph is only read, never reset.

    Returns:
        ``(rows, stats, text)``: :func:`analysis.ftrace_text.parse_function_graph`'s
        result and the raw trace text; None when there is no boot graph (the
        kernel was booted without the options).
    """
    if saved is not None and Path(saved).exists():
        text = Path(saved).read_text(errors="replace")
    else:
        if not tracefs:
            return None
        tracer = Path(tracefs, "current_tracer")
        try:
            if tracer.read_text().strip() != "function_graph":
                return None
            text = Path(tracefs, "trace").read_text(errors="replace")
        except OSError:
            return None
        if booted_with_our_graph(cmdline):
            with contextlib.suppress(OSError):
                tracer.write_text("nop\n")
                Path(tracefs, "set_graph_function").write_text("\n")
                Path(tracefs, "trace").write_text("")
    rows, stats = parse_function_graph(text)
    if not stats["calls"]:
        return None
    return rows, stats, text


def module_init_paths(specs: list[Spec], index=None) -> dict[str, list[str]]:
    """Module -> documented functions of paths rooted in that module's init function.

    A path counts when ``index`` (the release's :class:`probes.modindex.ModuleIndex`)
    places its root function in the ``.init`` code of exactly one module, and
    that module is loadable but not loaded yet. Without an index, none counts.
    """
    out: dict[str, list[str]] = {}
    for spec in specs:
        for path in spec.paths:
            root = next((s.function for s in path.steps if s.function), None)
            mods = index.modules_of(root) if root and index is not None else []
            mod = mods[0] if len(mods) == 1 else None
            if not mod or not index.is_init(mod, root) or module_status(mod) != "loadable":
                continue
            fns = out.setdefault(mod, [])
            for f in path.functions():
                if f not in fns:
                    fns.append(f)
    return out


def _append(path: Path, line: str) -> None:
    """Append one line to a tracefs control file. (Python's append mode seeks to the
    end first, which tracefs's kprobe_events refuses with EINVAL: write with O_APPEND.)"""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def capture_module_init(tracefs: str, module: str, functions: list[str], kallsyms: dict[str, str],
                        progress=lambda m: None, index=None) -> tuple[list[tuple], list[str], str]:
    """Load ``module`` with kprobe events on ``functions`` and return what they saw.

    Works in a tracefs instance of its own (``instances/callpath-<pid>``, its own
    buffer and ``tracing_on``); the global tracer, buffer and ``tracing_on`` are
    never written. The kprobe events are named ``callpath_<pid>/cp_{p,r}N``;
    the instance, each event and the module load are registered with
    :mod:`probes.runstate` before they are made, and removed in ``finally``.

    Args:
        tracefs: mounted tracefs path.
        module: module to ``modprobe``.
        functions: documented functions of its init path.
        kallsyms: symbol -> module of the running kernel before the load.
        index: the release's :class:`probes.modindex.ModuleIndex`: names the
            module of functions not in kallsyms yet (``MODULE:function``).

    Returns:
        ``(rows, notes, text)``: event rows (function name as the last field), notes
        on functions that could not get a probe, and the raw trace text. The module stays loaded (the caller
        unloads it, :func:`probes.kernel.unload_module`); the kprobe events and the instance are removed.
    """
    from . import runstate

    group = f"{EVENT_GROUP}_{os.getpid()}"
    kevents = Path(tracefs, "kprobe_events")
    instance = Path(tracefs, "instances", f"callpath-{os.getpid()}")
    defined: dict[str, tuple[str, int]] = {}
    notes: list[str] = []
    text = ""
    made_instance = False
    try:
        runstate.register("tracefs-instance", str(instance))
        instance.mkdir()
        made_instance = True
        for i, fn in enumerate(functions):
            if fn in kallsyms:
                target = fn if kallsyms[fn] == "vmlinux" else f"{kallsyms[fn]}:{fn}"
            elif index is not None and len(index.modules_of(fn)) == 1:
                target = f"{index.modules_of(fn)[0]}:{fn}"
            else:
                notes.append(f"{fn}: not in kallsyms and no module known: no kprobe event")
                continue
            for kind, letter, extra in ((ENTRY, "p", ""), (RETURN, "r", " arg1=$retval")):
                name = f"cp_{letter}{i}"
                runstate.register("kprobe-event", f"{tracefs}|{group}/{name}")
                defined[name] = (fn, kind)
                try:
                    _append(kevents, f"{letter}:{group}/{name} {target}{extra}")
                except OSError as err:
                    del defined[name]
                    runstate.unregister("kprobe-event", f"{tracefs}|{group}/{name}")
                    notes.append(f"{fn}: kprobe event {target} refused ({err.strerror})")
                    break
        if defined:
            Path(instance, "events", group, "enable").write_text("1\n")
        progress(f"loading module {module} with {len(defined)} kprobe events on its init path")
        runstate.register("module", module)
        proc = subprocess.run(["modprobe", "--", module], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            notes.append(f"modprobe {module} failed: {proc.stderr.strip()}")
        text = Path(instance, "trace").read_text(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            if defined:
                Path(instance, "events", group, "enable").write_text("0\n")
        for name in defined:
            with contextlib.suppress(OSError):
                _append(kevents, f"-:{group}/{name}")
                runstate.unregister("kprobe-event", f"{tracefs}|{group}/{name}")
        if made_instance:
            with contextlib.suppress(OSError):
                instance.rmdir()
                runstate.unregister("tracefs-instance", str(instance))
        else:
            runstate.unregister("tracefs-instance", str(instance))
    return parse_kprobe_events(text, defined), notes, text
