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

Filesystems this module mounts are unmounted by :func:`mounted_tracefs` on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
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
    """

    release: str
    text: dict[str, str] = field(default_factory=dict)
    clones: dict[str, list[str]] = field(default_factory=dict)
    traceable: set[str] = field(default_factory=set)
    traceable_known: bool = False
    blacklist: set[str] = field(default_factory=set)


def kernel_release() -> str:
    """The running kernel's release string (``os.uname().release``)."""
    return os.uname().release


def has_kprobes() -> bool:
    """True when the running kernel can attach kprobes through perf (bcc's way)."""
    return Path("/sys/bus/event_source/devices/kprobe").exists()


def read_kallsyms(path: str = "/proc/kallsyms") -> tuple[dict[str, str], dict[str, list[str]]]:
    """Read text symbols from kallsyms.

    Returns:
        ``(text, clones)``: ``text`` maps symbol -> module (``vmlinux`` for the
        core image); ``clones`` maps a base name to its compiler clones.

    Raises:
        KernelAccessError: the file cannot be read, or every address is zero
            (kptr_restrict hides them from non-root users, so the listing is not
            trusted to be complete).
    """
    text: dict[str, str] = {}
    clones: dict[str, list[str]] = {}
    try:
        fh = open(path, encoding="ascii", errors="replace")
    except OSError as err:
        raise KernelAccessError(f"cannot read {path}: {err.strerror}") from None
    with fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in ("t", "T"):
                continue
            name = parts[2]
            module = parts[3].strip("[]") if len(parts) > 3 else "vmlinux"
            text.setdefault(name, module)
            m = CLONE_RE.match(name)
            if m:
                clones.setdefault(m.group("base"), []).append(name)
    return text, clones


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
    target = TRACEFS_CANDIDATES[0]
    try:
        _mount("tracefs", target)
    except KernelAccessError:
        yield None
        return
    try:
        yield target
    finally:
        _umount(target)


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
    text, clones = read_kallsyms()
    with mounted_tracefs() as tracefs:
        traceable, known = read_traceable(tracefs)
    return KernelSymbols(
        release=kernel_release(),
        text=text,
        clones=clones,
        traceable=traceable,
        traceable_known=known,
        blacklist=read_kprobe_blacklist(),
    )


def loaded_modules() -> set[str]:
    """Names of loaded modules (from /proc/modules; empty when the kernel has no module support)."""
    try:
        with open("/proc/modules", encoding="ascii") as fh:
            return {line.split()[0] for line in fh if line.strip()}
    except OSError:
        return set()


def builtin_modules(release: str | None = None) -> set[str]:
    """Modules built into the kernel image (``modules.builtin``), names without ``.ko``."""
    path = Path("/lib/modules") / (release or kernel_release()) / "modules.builtin"
    try:
        return {Path(line.strip()).name.removesuffix(".ko") for line in path.read_text().splitlines() if line.strip()}
    except OSError:
        return set()


@contextlib.contextmanager
def modules_loaded(names: list[str], progress=lambda msg: None):
    """Load kernel modules for the run and unload, on exit, those this call loaded.

    Uses ``modprobe`` (kmod); a module that is built in or already loaded is left
    alone. Yields ``{name: "loaded" | "present" | "unavailable: reason"}``.
    """
    before = loaded_modules()
    status: dict[str, str] = {}
    loaded_here: list[str] = []
    for name in names:
        if name in before:
            status[name] = "present"
            continue
        try:
            proc = subprocess.run(["modprobe", name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            status[name] = f"unavailable: {err}"
            continue
        if proc.returncode == 0:
            now = loaded_modules()
            if name in now and name not in before:
                loaded_here.append(name)
                status[name] = "loaded"
            else:
                status[name] = "present"
        else:
            status[name] = "unavailable: " + (proc.stderr.strip().splitlines() or ["modprobe failed"])[-1]
        progress(f"module {name}: {status[name]}")
    try:
        yield status
    finally:
        for name in reversed(loaded_here):
            subprocess.run(["modprobe", "-r", name], capture_output=True, timeout=60)
