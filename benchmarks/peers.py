"""The other tracers the overhead benchmark measures beside callpath: bpftrace and ftrace.

Each runs on the same symbols while the caller's ``measure()`` floods, and leaves
the machine as it found it (bpftrace's process killed, the tracefs instance removed;
both registered with callpath's runstate so a SIGKILLed benchmark is swept).
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from callpath.probes import kernel, runstate


# -- bpftrace --------------------------------------------------------------
def bpftrace_program(syms: list[str]) -> str:
    """bpftrace text: kprobe+kretprobe on each symbol counted per probe; BEGIN says attached."""
    points = ",\n".join(f"kprobe:{s},kretprobe:{s}" for s in syms)
    return 'BEGIN { printf("callpath-bench attached\\n"); }\n' + points + " { @[probe] = count(); }\n"


def run_bpftrace(syms: list[str], measure: Callable[[], dict], progress) -> dict:
    """bpftrace on ``syms`` while ``measure()`` floods; symbols it cannot attach are dropped (listed), and it is restarted.

    Returns ``measure()``'s row with ``counted`` (hits bpftrace counted), ``attached``, ``probes`` and
    ``failed``, or ``{"skipped": why}``.
    """
    exe = shutil.which("bpftrace")
    if not exe:
        return {"skipped": "bpftrace is not installed (apt-get install bpftrace; make setup does)"}
    dropped = {}
    for _ in range(8):
        if not syms:
            break
        proc = subprocess.Popen([exe, "-B", "line", "-e", bpftrace_program(syms)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        runstate.register("pid", str(proc.pid))
        try:
            lines = []
            t0 = time.monotonic()
            for line in proc.stdout:  # "Attaching N probes...", then BEGIN's line once all are attached
                lines.append(line.rstrip())
                if "callpath-bench attached" in line:
                    break
            text = "\n".join(lines)
            untraceable = set(re.findall(r"WARNING: (\S+) is not traceable", text)) & set(syms)
            found = re.search(r"Attaching (\d+) probes?", text)
            probes = int(found[1]) - 1 if found else 0  # BEGIN is one
            ok = lines and "callpath-bench attached" in lines[-1]
            if not ok or (untraceable and probes < 2 * len(syms)):
                proc.kill()
                proc.wait(timeout=30)
                bad = untraceable | set(re.findall(r"k(?:ret)?probe:([A-Za-z0-9_.]+)", "\n".join(
                    ln for ln in lines if "ERROR" in ln))) & set(syms)
                if not bad:
                    return {"skipped": "bpftrace failed: " + " | ".join(lines[-3:])}
                for s in bad:
                    dropped[s] = next((ln for ln in lines if s in ln), "")[:200]
                syms = [s for s in syms if s not in bad]
                progress(f"bpftrace cannot attach {', '.join(sorted(bad))}: restarting without them")
                continue
            progress(f"bpftrace attached {probes} probes on {len(syms)} functions in {time.monotonic() - t0:.1f} s")
            row = measure()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            runstate.unregister("pid", str(proc.pid))
        counts = {m[0]: int(m[1]) for m in re.findall(r"^@\[(k(?:ret)?probe:[^\]]+)\]: (\d+)", out, re.M)}
        row.update(counted=sum(counts.values()), attached=len(syms), probes=probes, failed=dropped)
        return row
    return {"skipped": "bpftrace kept failing to attach", "failed": dropped}


# -- ftrace ------------------------------------------------------------------
def _write(path: Path, text: str, append: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def run_ftrace(syms: list[str], measure: Callable[[], dict], progress) -> dict:
    """function_graph (else function) on ``syms`` in a tracefs instance made and removed here, while ``measure()`` floods.

    Returns ``measure()``'s row with ``tracer``, ``counted`` (buffer entries, overruns included),
    ``lost`` (overruns), ``attached`` and ``failed``, or ``{"skipped": why}``.
    """
    with kernel.mounted_tracefs() as tracefs:
        if not tracefs:
            return {"skipped": "tracefs cannot be mounted"}
        inst = Path(tracefs, "instances", f"callpath-bench-{os.getpid()}")
        runstate.register("tracefs-instance", str(inst))
        inst.mkdir()
        try:
            tracers = Path(inst, "available_tracers").read_text().split()
            tracer = next((t for t in ("function_graph", "function") if t in tracers), None)
            note = "" if tracer == "function_graph" else (
                f"function_graph is not allowed in a tracefs instance on {kernel.kernel_release()} "
                f"(instance tracers: {' '.join(tracers)})")
            if tracer is None:
                return {"skipped": note}
            failed = {}
            for s in syms:
                try:
                    _write(inst / "set_ftrace_filter", s + "\n", append=True)
                except OSError as err:
                    failed[s] = err.strerror
            try:
                accepted = Path(inst, "set_ftrace_filter").read_text().split()
            except OSError as err:
                return {"skipped": f"set_ftrace_filter cannot be read: {err.strerror}", "failed": failed}
            if not accepted:  # an empty filter would trace every function
                return {"skipped": "set_ftrace_filter took none of the symbols", "failed": failed}
            _write(inst / "buffer_size_kb", "4096\n")
            _write(inst / "current_tracer", tracer + "\n")
            progress(f"ftrace {tracer} on {len(accepted)} functions in {inst}" + (f" ({note})" if note else ""))
            row = measure()
            _write(inst / "tracing_on", "0\n")
            counted = overrun = 0
            for stats in inst.glob("per_cpu/cpu*/stats"):
                kv = dict(ln.split(":", 1) for ln in stats.read_text().splitlines() if ":" in ln)
                counted += int(kv.get("entries", 0)) + int(kv.get("overrun", 0))
                overrun += int(kv.get("overrun", 0))
            row.update(tracer=tracer, note=note, counted=counted, lost=overrun, attached=len(accepted),
                       failed=failed)
            return row
        finally:
            with contextlib.suppress(OSError):
                _write(inst / "tracing_on", "0\n")
                _write(inst / "current_tracer", "nop\n")
                _write(inst / "set_ftrace_filter", "")
            inst.rmdir()
            runstate.unregister("tracefs-instance", str(inst))
