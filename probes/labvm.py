"""Run the probing inside a lab VM on a Debian kernel, with virtme-ng (vng).

Used when the running kernel cannot do kprobes (``CONFIG_KPROBES`` not set).
The lab VM boots an installed Debian kernel (``/boot/vmlinuz-RELEASE`` with its
headers under ``/lib/modules/RELEASE/build``, which bcc needs) under QEMU with
TCG emulation (``--disable-kvm``: KVM hangs on this kind of host). The guest sees
the host's files read-only, so the project's venv runs unchanged; the output
directory is shared read-write with ``--rwdir``.

Measured on the 6.18 Firecracker dev VM with Debian's 6.1.0-56-amd64: boot
about 20 s, bcc compiling callpath's program 70-80 s (TCG).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


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


def vng_command(kernel: LabKernel, inner: list[str], rwdirs: list[Path], cpus: int = 2, memory: str = "2G",
                append: str | None = None) -> list[str]:
    """The vng command line that runs ``inner`` in the lab VM."""
    cmd = [find_vng(), "--run", str(kernel.image), "--disable-kvm", "--cpus", str(cpus), "--memory", memory]
    for d in rwdirs:
        cmd += ["--rwdir", str(d)]
    if append:
        cmd += ["--append", append]
    cmd += ["--", shlex.join(inner)]
    return cmd


def run_in_lab(kernel: LabKernel, inner: list[str], rwdirs: list[Path], progress=lambda m: None,
               timeout_s: float = 1500, append: str | None = None) -> int:
    """Boot the lab VM, run ``inner`` in it, stream its output as progress lines.

    Returns:
        the exit status of ``inner`` as vng reports it.

    Raises:
        LabError: vng cannot start, or the run exceeds ``timeout_s`` seconds (the
            VM is killed: no QEMU is left running).
    """
    cmd = vng_command(kernel, inner, rwdirs, append=append)
    env = dict(os.environ)
    # vng looks for its helpers (virtme-run ...) on PATH
    env["PATH"] = str(Path(find_vng()).parent) + os.pathsep + env.get("PATH", "")
    progress(f"booting lab VM: kernel {kernel.release}, QEMU TCG (no KVM), 2 CPUs")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, env=env, start_new_session=True)
    except OSError as err:
        raise LabError(f"cannot start vng: {err}") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            progress(f"[lab {time.monotonic() - t0:5.0f}s] {line.rstrip()}")
            if time.monotonic() - t0 > timeout_s:
                raise LabError(f"lab VM run exceeded {timeout_s:.0f} s")
        return proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
    except (subprocess.TimeoutExpired, KeyboardInterrupt, LabError) as err:
        _kill(proc)
        if isinstance(err, subprocess.TimeoutExpired):
            raise LabError(f"lab VM run exceeded {timeout_s:.0f} s") from None
        raise
    finally:
        if proc.poll() is None:
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """Kill vng and the QEMU it started (same session/process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
