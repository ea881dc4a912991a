"""Run the probing inside a lab VM on a Debian kernel, with virtme-ng (vng).

Used when the running kernel cannot do kprobes (``CONFIG_KPROBES`` not set).
The lab VM boots an installed Debian kernel (``/boot/vmlinuz-RELEASE`` with its
headers under ``/lib/modules/RELEASE/build``, which bcc needs) under QEMU with
TCG emulation (``--disable-kvm``: KVM hangs on this kind of host). The guest sees
the host's files read-only, so the project's venv runs unchanged; the output
directory is shared read-write with ``--rwdir``: a directory callpath makes
itself (no user path ever reaches vng, which pastes its options into a
``/bin/sh -c`` line: see :func:`check_vng_arg`).

Measured on the 6.18 Firecracker dev VM with Debian's 6.1.0-56-amd64: boot
about 20 s, bcc compiling callpath's program about 33 s on 6.1 and on 6.12 (TCG;
70-80 s while it included linux/netdevice.h).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .labconsole import CONSOLE_LOGLEVEL, GuestConsole


class LabError(RuntimeError):
    """The lab VM cannot run: vng/QEMU/kernel/headers missing, boot failure, timeout."""


@dataclass
class LabKernel:
    """An installed kernel a lab VM can boot.

    Attributes:
        release: e.g. ``6.1.0-56-amd64``.
        image: path of ``vmlinuz``.
        headers: True when ``/lib/modules/<release>/build`` exists (bcc needs it).
    """

    release: str
    image: Path
    headers: bool


def _release_key(release: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", release))


def list_lab_kernels(boot: str = "/boot", modules: str = "/lib/modules") -> list[LabKernel]:
    """Installed kernels, newest first (``/boot/vmlinuz-*``)."""
    out = []
    for img in Path(boot).glob("vmlinuz-*"):
        rel = img.name.removeprefix("vmlinuz-")
        out.append(LabKernel(rel, img, (Path(modules) / rel / "build").exists()))
    return sorted(out, key=lambda k: _release_key(k.release), reverse=True)


def choose_kernel(requested: str | None = None) -> LabKernel:
    """Pick the lab kernel: ``requested`` or the newest one with headers.

    Raises:
        LabError: none installed, or the requested one is missing or lacks headers.
    """
    kernels = list_lab_kernels()
    if requested:
        for k in kernels:
            if k.release == requested:
                if not k.headers:
                    raise LabError(f"lab kernel {requested} has no headers: apt-get install linux-headers-{requested}")
                return k
        have = ", ".join(k.release for k in kernels) or "none"
        raise LabError(f"lab kernel {requested} is not installed (installed: {have}); "
                       f"apt-get install linux-image-{requested} linux-headers-{requested}")
    usable = [k for k in kernels if k.headers]
    if not usable:
        raise LabError("no lab kernel with headers is installed: `make setup` installs Debian's "
                       "linux-image-amd64 and linux-headers-amd64")
    return usable[0]


def choose_kernels(requested: list[str] | None = None) -> list[LabKernel]:
    """Lab kernels for ``--kernel`` given zero or more times, oldest first.

    ``None``/``[]``: the newest kernel with headers (:func:`choose_kernel`);
    ``"all"``: every installed kernel with headers; otherwise each named
    release (repeats dropped).

    Raises:
        LabError: a named kernel is missing or lacks headers, or none has headers.
    """
    if not requested:
        return [choose_kernel()]
    if "all" in requested:
        usable = [k for k in list_lab_kernels() if k.headers]
        if not usable:
            choose_kernel()  # raises with the set-up hint
        return list(reversed(usable))
    picked = [choose_kernel(r) for r in dict.fromkeys(requested)]
    return sorted(picked, key=lambda k: _release_key(k.release))


def find_vng() -> str:
    """Path of the ``vng`` command (virtme-ng), preferring the one beside this Python.

    Raises:
        LabError: not installed.
    """
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return str(here)
    found = shutil.which("vng")
    if not found:
        raise LabError("virtme-ng (vng) is not installed: `make setup` installs it into the venv")
    return found


#: What may reach virtme-ng's options: vng pastes them into a ``/bin/sh -c``
#: line unquoted, and virtme-run reads ``=`` in ``--rwdir`` as GUEST=HOST.
SAFE_VNG_ARG = re.compile(r"^[A-Za-z0-9_./:,+-]+$")


def check_vng_arg(what: str, value: str) -> str:
    """Return ``value`` when it can be passed to vng as one option value unchanged.

    Raises:
        LabError: it holds whitespace, ``=``, a shell metacharacter or anything
            outside ``[A-Za-z0-9_./:,+-]``, or starts with ``-``.
    """
    if not SAFE_VNG_ARG.match(value) or value.startswith("-"):
        raise LabError(f"refusing to pass {what} {value!r} to virtme-ng: only letters, digits and _./:,+- "
                       "are safe in its options (it runs them through /bin/sh)")
    return value


#: vng's option for each TCG threading (constants: vng pastes them into its shell line as they are).
TCG_OPTS = {"single": "--qemu-opts=-accel tcg,thread=single", "multi": "--qemu-opts=-accel tcg,thread=multi"}
#: vng's option that backs all guest RAM with host memory at boot (QEMU ``-mem-prealloc``; it
#: sets ``prealloc=on`` on every memory backend, virtme's memfd one included): no host page
#: fault on a guest page's first touch.
PREALLOC_OPT = "--qemu-opts=-mem-prealloc"


def vng_command(kernel: LabKernel, inner: list[str], rwdirs: list[Path], cpus: int = 2, memory: str = "2G",
                append: str | None = None, console: bool = False, tcg_threads: str = "single",
                prealloc: bool = False) -> list[str]:
    """The vng command line that runs ``inner`` in the lab VM.

    ``rwdirs`` should be directories callpath made itself (see
    :func:`probes.runstate.make_temp_dir`); every option value is checked with
    :func:`check_vng_arg`, and ``inner`` is one argument that vng quotes.

    ``console``: the guest kernel's console (warnings and worse, see
    :mod:`probes.labconsole`) joins vng's output.

    ``tcg_threads``: ``single`` (default) runs all vCPUs in one QEMU thread
    (``-accel tcg,thread=single``), ``multi`` gives each its own (QEMU's default
    for x86 on x86). Measured on Debian 6.1.0-56-amd64 with 2 vCPUs: under
    ``multi`` the guest kernel locked up while ftrace patched its text (switching
    ``function_graph`` off with traffic running: 1 of 3 rounds here, and twice
    in CI runs); under ``single`` 5 rounds of 5 passed, each taking the same
    time (about 130 s: recording is bound by one CPU's work under TCG).

    ``prealloc``: back the guest's RAM with host memory before it boots
    (:data:`PREALLOC_OPT`); the host then pays no page fault when the guest
    first writes a page (benchmarks: ``bench_overhead.py --prealloc``).

    Raises:
        LabError: an option value is unsafe for vng.
    """
    cmd = [find_vng()]
    if console:
        cmd.append("--verbose")
        append = " ".join(filter(None, [CONSOLE_LOGLEVEL, append]))
    if tcg_threads not in TCG_OPTS:
        raise LabError(f"tcg_threads must be single or multi, not {tcg_threads!r}")
    cmd.append(TCG_OPTS[tcg_threads])
    if prealloc:
        cmd.append(PREALLOC_OPT)
    cmd += ["--run", check_vng_arg("the kernel image", str(kernel.image)), "--disable-kvm",
           "--cpus", check_vng_arg("--cpus", str(cpus)), "--memory", check_vng_arg("--memory", memory)]
    for d in rwdirs:
        cmd += ["--rwdir", check_vng_arg("the shared directory", str(d))]
    if append:
        for opt in append.split(" "):
            check_vng_arg("the kernel option", opt.replace("=", ":", 1))  # one NAME=VALUE each
        cmd += ["--append", append]
    cmd += ["--", shlex.join(inner)]
    return cmd


#: Runs beside vng: when callpath dies (even by SIGKILL) the pipe on its stdin
#: reaches EOF and it kills vng's process group (vng, virtme-run, QEMU).
#: A line "done" on the pipe means vng has ended normally: nothing to kill.
_WATCHDOG = (
    "import os,signal,sys,time\n"
    "pgid=int(sys.argv[1])\n"
    "line=sys.stdin.readline()\n"
    "if line.strip()!='done':\n"
    "    for sig in (signal.SIGTERM,signal.SIGKILL):\n"
    "        try: os.killpg(pgid,sig)\n"
    "        except OSError: break\n"
    "        time.sleep(3)\n"
)


def _parent_death_signal() -> None:
    """In the child before exec: get SIGKILL when callpath dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1


class LabGuestError(LabError):
    """The lab guest stopped making progress: its kernel paniced, oopsed or locked up, or it fell silent.

    Attributes:
        console: the guest's :class:`probes.labconsole.GuestConsole` (kernel lines, fatal line).
    """

    def __init__(self, message: str, console: GuestConsole):
        super().__init__(message)
        self.console = console


def run_in_lab(kernel: LabKernel, inner: list[str], rwdirs: list[Path], progress=lambda m: None,
               timeout_s: float = 1500, append: str | None = None, cwd: Path | None = None,
               silent_s: float = 900, attempts: int = 2, console_log: Path | None = None,
               tcg_threads: str = "single", memory: str = "2G", prealloc: bool = False) -> int:
    """Boot the lab VM, run ``inner`` in it, stream its output as progress lines.

    vng runs in a session of its own, registered with :mod:`probes.runstate`
    (a later sweep kills the group), with a parent-death signal and a
    watchdog process that kills the whole group (QEMU included) when callpath
    dies, however it dies. ``timeout_s`` holds while the guest prints nothing.

    The guest kernel's console (warnings and worse) is read apart from the
    command's output (:mod:`probes.labconsole`). A guest whose kernel panics,
    oopses, locks up or stalls RCU, or whose command prints nothing for
    ``silent_s`` seconds, is killed and booted again, ``attempts`` boots in all:
    under TCG such a guest never finishes (measured: a soft lockup while
    ftrace patched text, see :mod:`probes.labconsole`). ``console_log``, when
    given, receives the kernel lines of the last boot. ``tcg_threads`` and
    ``memory`` (the guest's RAM, vng's ``--memory``) and ``prealloc``: see :func:`vng_command`.

    Returns:
        the exit status of ``inner`` as vng reports it.

    Raises:
        LabGuestError: the last boot's kernel failed or its command fell silent
            (the message names the kernel's report and where the CPU was).
        LabError: vng cannot start, an option is unsafe, or the run exceeds
            ``timeout_s`` seconds (the VM is killed: no QEMU is left running).
    """
    handover = _index_handover(kernel, rwdirs, progress)
    if handover:
        inner = ["/usr/bin/env", f"{handover[0]}={handover[1]}", *inner]
    try:
        attempt = 1
        while True:
            console = GuestConsole()
            try:
                return _run(kernel, inner, rwdirs, progress, timeout_s, append, cwd, silent_s, console,
                            tcg_threads, memory, prealloc)
            except LabGuestError as err:
                if attempt >= attempts:
                    raise
                attempt += 1
                progress(f"lab VM: {err}; booting again (boot {attempt} of {attempts})")
            finally:
                if console_log is not None:
                    with contextlib.suppress(OSError):
                        Path(console_log).write_text(console.text())
    finally:
        if handover:
            with contextlib.suppress(OSError):
                os.unlink(handover[1])


def _index_handover(kernel: LabKernel, rwdirs: list[Path], progress) -> tuple[str, str] | None:
    """Write the host's module index of the guest's release into the first rwdir, for the guest.

    The guest cannot use the host's cache (virtme-ng mounts a tmpfs over
    /var/cache: measured, /var/cache holds only ``private`` and ``man`` in the
    guest): without the index it rebuilds it, 7-11 min on 6.1 and about 25 min
    on 6.12 under TCG (measured). Returns ``(variable, path)`` for the inner
    command's environment, or None (no rwdir, no module tree).
    """
    from .modindex import GUEST_INDEX_ENV, ModuleIndexError, load_index, write_for_guest  # noqa: PLC0415

    if not rwdirs:
        return None
    try:
        index = load_index(kernel.release, progress=progress)
        path = Path(rwdirs[0]) / f".callpath-modindex-{kernel.release}-{os.getpid()}.json"
        write_for_guest(index, path)
    except (ModuleIndexError, OSError) as err:
        progress(f"module index not handed to the lab VM ({err}); the guest builds its own")
        return None
    return GUEST_INDEX_ENV, str(path)


#: Seconds the guest may go on after its kernel reported a lockup or panic,
#: for the report's call trace to reach the console.
FATAL_GRACE_S = 20.0


def _run(kernel: LabKernel, inner: list[str], rwdirs: list[Path], progress, timeout_s: float,
         append: str | None, cwd: Path | None, silent_s: float, console: GuestConsole,
         tcg_threads: str = "single", memory: str = "2G", prealloc: bool = False) -> int:
    import queue
    import threading

    from . import runstate

    cmd = vng_command(kernel, inner, rwdirs, memory=memory, append=append, console=True, tcg_threads=tcg_threads,
                      prealloc=prealloc)
    env = dict(os.environ)
    # vng looks for its helpers (virtme-run ...) on PATH
    env["PATH"] = str(Path(find_vng()).parent) + os.pathsep + env.get("PATH", "")
    progress(f"booting lab VM: kernel {kernel.release}, QEMU TCG (no KVM, {tcg_threads}-threaded), 2 CPUs, "
             f"{memory} of memory" + (" (preallocated)" if prealloc else ""))
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=env, start_new_session=True,
                                preexec_fn=_parent_death_signal, cwd=cwd or (rwdirs[0] if rwdirs else "/"))
    except OSError as err:
        raise LabError(f"cannot start vng: {err}") from None
    runstate.register("pid", str(proc.pid))  # its own session: pgid == pid
    watchdog = None
    try:
        watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(proc.pid)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                    text=True)
        lines: queue.Queue = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="callpath-lab-output", daemon=True).start()
        last_line = t0
        fatal_at = None
        while True:
            now = time.monotonic()
            if now - t0 >= timeout_s:
                raise LabError(f"lab VM run exceeded {timeout_s:.0f} s" + _why(console))
            if fatal_at is not None and now - fatal_at >= FATAL_GRACE_S:
                raise LabGuestError(console.summary(), console)
            if now - last_line >= silent_s:
                raise LabGuestError(f"the guest printed nothing for {silent_s:.0f} s" + _why(console), console)
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if console.feed(line):
                if console.fatal is not None and fatal_at is None:
                    fatal_at = time.monotonic()
                    progress(f"[lab {fatal_at - t0:5.0f}s] {console.summary()}")
                continue
            last_line = time.monotonic()
            progress(f"[lab {last_line - t0:5.0f}s] {line.rstrip()}")
        rc = proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        if not console.booted:  # vng or QEMU failed before the kernel ran: what they said
            for text in console.preboot:
                progress(f"[lab] {text}")
        if console.fatal is not None:
            raise LabGuestError(f"{console.summary()}; vng exited {rc}", console)
        return rc
    except (subprocess.TimeoutExpired, KeyboardInterrupt, LabError) as err:
        _kill(proc)
        if isinstance(err, subprocess.TimeoutExpired):
            raise LabError(f"lab VM run exceeded {timeout_s:.0f} s") from None
        raise
    finally:
        if proc.poll() is None:
            _kill(proc)
        if watchdog is not None:
            with contextlib.suppress(OSError, ValueError):
                watchdog.stdin.write("done\n")
                watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=5)
        runstate.unregister("pid", str(proc.pid))


def _why(console: GuestConsole) -> str:
    """``"; guest kernel: ..."`` when the kernel reported something fatal, else ``""``."""
    return f"; {console.summary()}" if console.fatal else ""


def _kill(proc: subprocess.Popen) -> None:
    """Kill vng and the QEMU it started (same session/process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
