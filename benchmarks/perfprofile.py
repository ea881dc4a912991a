"""Where the CPU goes during a variant's floods: ``perf record -a`` around them, for ``--perf``.

A system-wide sampling profile (``cpu-clock``, a software event: it works in a
QEMU TCG guest, which has no PMU) of every CPU while the measured floods run,
then ``perf report`` sorted by command, DSO and symbol. Kernel symbols come
from /proc/kallsyms (the benchmark runs as root). Sampling costs every CPU a
little (one interrupt per sample), so a profiled run's packets/s are a little
lower than an unprofiled one's; compare profiles with profiles.

perf is run with a fixed argv (no shell); its output file lives in a private
temporary directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

#: Samples per second per CPU.
FREQ = 499
#: Report lines kept per variant (the heaviest first).
TOP = 40


@contextlib.contextmanager
def profiled(row: dict, enabled: bool = True):
    """Profile the body with ``perf record -a``; put the report's top lines in ``row["profile"]``.

    ``row["profile"]`` is a list of strings: ``"percent command:pid dso"`` (the 16 heaviest), then
    ``"percent command dso symbol"`` (at most :data:`TOP`), or ``["not profiled: why"]`` when perf is missing or fails. Never raises
    for perf's sake: the measurement goes on unprofiled.
    """
    if not enabled:
        yield
        return
    perf = shutil.which("perf")
    if perf is None:
        row["profile"] = ["not profiled: no perf on PATH"]
        yield
        return
    with tempfile.TemporaryDirectory(prefix="callpath-perf-") as tmp:
        data, ctl, ack = Path(tmp) / "perf.data", Path(tmp) / "ctl", Path(tmp) / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # started with its events off (--delay=-1), turned on through the control FIFO once it is
        # ready: under emulation perf takes seconds to start, longer than a fast flood lasts
        proc = subprocess.Popen([perf, "record", "-a", "-e", "cpu-clock", "-F", str(FREQ), "-q", "--delay=-1",
                                 f"--control=fifo:{ctl},{ack}", "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ctl_fd, ack_fd = os.open(ctl, os.O_RDWR), os.open(ack, os.O_RDWR)  # O_RDWR: no wait for perf
        try:
            os.write(ctl_fd, b"enable\n")
            ready, _w, _x = select.select([ack_fd], [], [], 120)
            if not ready:
                row["profile"] = ["not profiled: perf did not start within 120 s"]
            else:
                os.read(ack_fd, 64)
            yield
        finally:
            os.close(ctl_fd)
            os.close(ack_fd)
            proc.send_signal(signal.SIGINT)
            try:
                _out, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
        if "profile" not in row:
            row["profile"] = report(perf, data, "pid,dso", 16) + report(perf, data) if data.exists() else \
                [f"not profiled: perf record failed: {err.decode(errors='replace').strip()[-200:]}"]


def report(perf: str, data: Path, sort: str = "comm,dso,sym", top: int = TOP) -> list[str]:
    """The top ``top`` lines of ``perf report`` on ``data``, sorted by ``sort`` (perf's keys)."""
    try:
        out = subprocess.run([perf, "report", "--stdio", "--no-children", "-i", str(data), "--sort", sort,
                              "--percent-limit", "0.5"], capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [f"not profiled: perf report: {err}"]
    lines = [" ".join(ln.split()) for ln in out.stdout.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[:top] or [f"not profiled: perf report gave nothing: {out.stderr.strip()[-200:]}"]
