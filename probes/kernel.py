"""Facts about the running kernel: release, kallsyms, ftrace-traceable functions, kprobe support.

Everything here is read from the running kernel, never assumed:

* ``/proc/kallsyms`` (symbol, type, module) — fs/proc + kernel/kallsyms.c;
* ``available_filter_functions`` in tracefs — the functions ftrace (and so
  fentry/kprobe-on-ftrace) can attach to, kernel/trace/ftrace.c;
* ``/sys/kernel/debug/kprobes/blacklist`` — functions kprobes refuse
  (kernel/kprobes.c), read when debugfs is available;
* ``/sys/bus/event_source/devices/kprobe`` — present when the kernel has the
  kprobe PMU (``CONFIG_KPROBE_EVENTS``; kernel/trace/trace_event_perf.c), which bcc
  uses to attach kprobes.

Filesystems this module mounts are unmounted by :func:`mounted_tracefs` on exit,
and mounts and module loads are registered with :mod:`probes.runstate` before
they happen (swept after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
#: Compiler clone suffixes: foo.isra.0, foo.constprop.0, foo.part.0, foo.cold, foo.llvm.123
CLONE_RE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)(?P<suffix>(?:\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\d+)?)+)$")


class KernelAccessError(RuntimeError):
    """A kernel interface could not be read (not root, filesystem missing, ...)."""


@dataclass
class KernelSymbols:
    """Symbols of the running kernel.

    Attributes:
        release: ``uname -r``.
        text: function symbol -> module (``"vmlinux"`` for the core image); only
            text symbols (types ``t``/``T``), from /proc/kallsyms.
        clones: base name -> clone symbols (``{"foo": ["foo.isra.0"]}``).
        traceable: names listed in ``available_filter_functions`` (with the
            ``[module]`` suffix removed); empty when tracefs could not be read.
        traceable_known: False when ``available_filter_functions`` was unreadable,
            in which case traceability is unknown rather than false.
        blacklist: kprobe blacklist entries, when debugfs was readable.
        init_text: ``__init`` functions of the core image (freed after boot).
    """

    release: str
    text: dict[str, str] = field(default_factory=dict)
    clones: dict[str, list[str]] = field(default_factory=dict)
    traceable: set[str] = field(default_factory=set)
    traceable_known: bool = False
    blacklist: set[str] = field(default_factory=set)
    init_text: set[str] = field(default_factory=set)


def kernel_release() -> str:
    """The running kernel's release string (``os.uname().release``)."""
    return os.uname().release


def has_kprobes() -> bool:
    """True when the running kernel can attach kprobes through perf (bcc's way)."""
    return Path("/sys/bus/event_source/devices/kprobe").exists()


def read_kallsyms(path: str = "/proc/kallsyms") -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """Read text symbols from kallsyms.

    Returns:
        ``(text, clones, init_text)``: ``text`` maps symbol -> module (``vmlinux``
        for the core image); ``clones`` maps a base name to its compiler clones;
        ``init_text`` holds the core image's ``__init`` functions, those whose
        address lies in ``[_sinittext, _einittext)`` (include/asm-generic/sections.h):
        their code is freed after boot. Empty when addresses are hidden (not root).

    Raises:
        KernelAccessError: the file cannot be read.
    """
    text: dict[str, str] = {}
    clones: dict[str, list[str]] = {}
    core: list[tuple[int, str]] = []
    bounds: dict[str, int] = {}
    try:
        fh = open(path, encoding="ascii", errors="replace")
    except OSError as err:
        raise KernelAccessError(f"cannot read {path}: {err.strerror}") from None
    with fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            name = parts[2]
            if name in ("_sinittext", "_einittext"):
                bounds[name] = int(parts[0], 16)
            if parts[1] not in ("t", "T"):
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else "vmlinux"
            text.setdefault(name, module)
            if module == "vmlinux":
                core.append((int(parts[0], 16), name))
            m = CLONE_RE.match(name)
            if m:
                clones.setdefault(m.group("base"), []).append(name)
    init_text: set[str] = set()
    lo, hi = bounds.get("_sinittext", 0), bounds.get("_einittext", 0)
    if lo and hi > lo:
        init_text = {name for addr, name in core if lo <= addr < hi and name not in ("_sinittext", "_einittext")}
    return text, clones, init_text


def find_tracefs() -> str | None:
    """Path of a mounted tracefs (one holding ``available_filter_functions``), or None."""
    for cand in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(cand, "available_filter_functions")):
            return cand
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(fstype: str, target: str) -> None:
    if _libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise KernelAccessError(f"mount -t {fstype} {target} failed: {os.strerror(err)}")


def _umount(target: str) -> None:
    _libc.umount2(target.encode(), 0)


@contextlib.contextmanager
def mounted_tracefs():
    """Yield a tracefs path, mounting tracefs at /sys/kernel/tracing if needed.

    A mount made here is undone on exit (also on error), so the machine is left
    as it was found. Yields None when tracefs cannot be mounted (not root).
    """
    existing = find_tracefs()
    if existing:
        yield existing
        return
    from . import runstate

    target = TRACEFS_CANDIDATES[0]
    runstate.register("mount", target)  # before mounting: a SIGKILL in between is swept
    try:
        _mount("tracefs", target)
    except KernelAccessError:
        runstate.unregister("mount", target)
        yield None
        return
    try:
        yield target
    finally:
        _umount(target)
        runstate.unregister("mount", target)


def read_traceable(tracefs: str | None) -> tuple[set[str], bool]:
    """Read ``available_filter_functions``; returns ``(names, known)``."""
    if not tracefs:
        return set(), False
    names: set[str] = set()
    try:
        with open(os.path.join(tracefs, "available_filter_functions"), encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if parts:
                    names.add(parts[0])
    except OSError:
        return set(), False
    return names, True


def read_kprobe_blacklist(path: str = "/sys/kernel/debug/kprobes/blacklist") -> set[str]:
    """Functions kprobes refuse (``0xstart-0xend name``), empty when unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return {line.split()[-1] for line in fh if line.strip()}
    except OSError:
        return set()


def load_symbols() -> KernelSymbols:
    """Read kallsyms, traceable functions and the kprobe blacklist of the running kernel.

    Raises:
        KernelAccessError: kallsyms is unreadable.
    """
    text, clones, init_text = read_kallsyms()
    with mounted_tracefs() as tracefs:
        traceable, known = read_traceable(tracefs)
    return KernelSymbols(
        release=kernel_release(),
        text=text,
        clones=clones,
        traceable=traceable,
        traceable_known=known,
        blacklist=read_kprobe_blacklist(),
        init_text=init_text,
    )


def _kernel_config() -> dict[str, str]:
    release = os.uname().release
    for path in ("/proc/config.gz", f"/boot/config-{release}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as fh:
                text = fh.read()
        except OSError:
            continue
        config = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                key, value = line.split("=", 1)
                config[key] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                config[line[2:].split(" ", 1)[0]] = "n"
        return config
    return {}


def module_status(module: str) -> str:
    """How the running kernel provides ``module`` (e.g. ``"ipvlan"``).

    Returns ``"loaded"`` (loaded module), ``"builtin"``, ``"loadable"``
    (available under ``/lib/modules``, not loaded), ``"missing"`` (kernel
    config says not set, or no such module anywhere we looked) or
    ``"unknown"`` (nothing to look at). Best effort, never raises; the
    authoritative test is creating the link.
    """
    try:
        sysdir = f"/sys/module/{module}"
        if os.path.isdir(sysdir):
            return "loaded" if os.path.exists(f"{sysdir}/initstate") else "builtin"
        moddir = f"/lib/modules/{os.uname().release}"
        ko = f"/{module}.ko"
        for fname, status in (("modules.builtin", "builtin"), ("modules.dep", "loadable")):
            try:
                with open(os.path.join(moddir, fname)) as fh:
                    for line in fh:
                        entry = line.split(":", 1)[0].strip()
                        if entry.endswith(ko) or ko + "." in entry:
                            return status
            except OSError:
                pass
        value = _kernel_config().get(f"CONFIG_{module.upper()}")
        if value == "y":
            return "builtin"
        if value == "m":
            return "loadable" if os.path.isdir(moddir) else "missing"
        if value == "n":
            return "missing"
        if os.path.isdir(moddir):
            return "missing"
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return "unknown"


@contextlib.contextmanager
def modules_loaded(names: list[str], progress=lambda msg: None):
    """Load kernel modules for the run and unload, on exit, those this call loaded.

    Uses ``modprobe`` (kmod); a module that is built in or already loaded is left
    alone. Each load is registered with :mod:`probes.runstate` first.
    Yields ``{name: "loaded" | "present" | "unavailable: reason"}``.
    """
    from . import runstate

    before = {n for n in names if module_status(n) in ("loaded", "builtin")}
    status: dict[str, str] = {}
    loaded_here: list[str] = []
    for name in names:
        if name in before:
            status[name] = "present"
            continue
        if module_status(name) == "missing":
            status[name] = "unavailable: not built for this kernel"
            progress(f"module {name}: {status[name]}")
            continue
        runstate.register("module", name)  # before loading: a SIGKILL in between is swept
        try:
            proc = subprocess.run(["modprobe", "--", name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            status[name] = f"unavailable: {err}"
            proc = None
        if proc is not None and proc.returncode == 0:
            loaded_here.append(name)
            status[name] = "loaded"
        else:
            runstate.unregister("module", name)
            if proc is not None:
                status[name] = "unavailable: " + (proc.stderr.strip().splitlines() or ["modprobe failed"])[-1]
        progress(f"module {name}: {status[name]}")
    try:
        yield status
    finally:
        for name in reversed(loaded_here):
            unload_module(name)


def unload_module(name: str) -> None:
    """``modprobe -r NAME`` for a module this run loaded (registered with
    :mod:`probes.runstate`); struck off the registry once it is gone."""
    from . import runstate

    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["modprobe", "-r", "--", name], capture_output=True, timeout=60)
    if module_status(name) != "loaded":
        runstate.unregister("module", name)
