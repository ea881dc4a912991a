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
  callees; then ``modprobe`` (:func:`capture_module_init`).

Everything added to tracefs is removed again, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from ..analysis.kernelfacts import module_of
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


def boot_roots(specs: list[Spec], init_text: set[str], lab_modules: set[str] = frozenset()) -> list[str]:
    """Root functions of documented paths that run at boot in the lab kernel.

    The lab kernel's own symbols are not readable before it boots (Debian ships a
    stub System.map), so a root counts as boot-time when ``init_text`` (the
    ``__init`` functions of a kernel we can read: the lab's System.map when real,
    else the running kernel's kallsyms) has it or it is named ``*_init`` -- unless
    it belongs to a module the lab kernel builds as loadable (``macvtap_init`` in
    Debian's 6.1: module init, handled by :func:`capture_module_init`).
    """
    roots = []
    for spec in specs:
        for path in spec.paths:
            fn = next((s.function for s in path.steps if s.function), None)
            if not fn or fn in roots or (module_of(fn) or "") in lab_modules:
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


def capture_boot_graph(tracefs: str | None, saved: str | Path | None = None) -> tuple[list[tuple], dict, str] | None:
    """The boot-time function_graph trace: from ``saved`` (written by
    :func:`save_graph_script`) or else from tracefs, switching the tracer off.

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
        with contextlib.suppress(OSError):
            tracer.write_text("nop\n")
            Path(tracefs, "set_graph_function").write_text("\n")
            Path(tracefs, "trace").write_text("")
    rows, stats = parse_function_graph(text)
    if not stats["calls"]:
        return None
    return rows, stats, text


def module_init_paths(specs: list[Spec]) -> dict[str, list[str]]:
    """Module -> documented functions of paths rooted in that module's init function.

    A path counts when its root function is ``<something>_init`` and its module
    (by name prefix) is loadable but not loaded yet.
    """
    out: dict[str, list[str]] = {}
    for spec in specs:
        for path in spec.paths:
            root = next((s.function for s in path.steps if s.function), None)
            mod = module_of(root) if root else None
            if not root or not root.endswith("_init") or not mod or module_status(mod) != "loadable":
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
                        progress=lambda m: None) -> tuple[list[tuple], list[str], str]:
    """Load ``module`` with kprobe events on ``functions`` and return what they saw.

    Args:
        tracefs: mounted tracefs path.
        module: module to ``modprobe``.
        functions: documented functions of its init path.
        kallsyms: symbol -> module of the running kernel before the load.

    Returns:
        ``(rows, notes, text)``: event rows (function name as the last field), notes
        on functions that could not get a probe, and the raw trace text. The module stays loaded (the caller
        unloads it); the kprobe events are removed.
    """
    kevents = Path(tracefs, "kprobe_events")
    defined: dict[str, tuple[str, int]] = {}
    notes: list[str] = []
    for i, fn in enumerate(functions):
        if fn in kallsyms:
            target = fn if kallsyms[fn] == "vmlinux" else f"{kallsyms[fn]}:{fn}"
        elif module_of(fn):
            target = f"{module_of(fn)}:{fn}"
        else:
            notes.append(f"{fn}: not in kallsyms and no module known: no kprobe event")
            continue
        for kind, letter, extra in ((ENTRY, "p", ""), (RETURN, "r", " arg1=$retval")):
            name = f"cp_{letter}{i}"
            try:
                _append(kevents, f"{letter}:{EVENT_GROUP}/{name} {target}{extra}")
                defined[name] = (fn, kind)
            except OSError as err:
                notes.append(f"{fn}: kprobe event {target} refused ({err.strerror})")
                break
    enable = Path(tracefs, "events", EVENT_GROUP, "enable")
    text = ""
    try:
        if defined:
            enable.write_text("1\n")
        Path(tracefs, "tracing_on").write_text("1\n")
        progress(f"loading module {module} with {len(defined)} kprobe events on its init path")
        proc = subprocess.run(["modprobe", module], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            notes.append(f"modprobe {module} failed: {proc.stderr.strip()}")
        text = Path(tracefs, "trace").read_text(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            if enable.exists():
                enable.write_text("0\n")
        for name in defined:
            with contextlib.suppress(OSError):
                _append(kevents, f"-:{EVENT_GROUP}/{name}")
        with contextlib.suppress(OSError):
            Path(tracefs, "trace").write_text("")
    return parse_kprobe_events(text, defined), notes, text
