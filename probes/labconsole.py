"""The lab guest's kernel console: kept apart from the command's output, read for lockups and panics.

The lab VM boots with vng ``--verbose`` and ``loglevel=5`` appended, so the
guest kernel's console (serial ttyS0, merged into vng's output) carries
warnings and worse but not the boot chatter (``KERN_INFO``). Its lines start
with the printk time stamp, ``[  386.876756] ``; the guest command's own lines
do not. :class:`GuestConsole` takes the kernel lines out of the progress
stream, keeps the last few hundred, and notices a guest that can no longer
finish: a panic, an oops, a soft or hard lockup, an RCU stall.

Why (measured, Debian 6.1.0-56-amd64 under QEMU TCG with 2 vCPUs, 2026-11-22):
switching the global tracer from ``function_graph`` back to ``nop`` while
traffic ran deadlocked the guest in 1 of 3 rounds: CPU 1 sat in
``text_poke_bp_batch`` -> ``smp_call_function_many_cond`` (``tracing_set_tracer``
-> ``unregister_ftrace_graph``), CPU 0 in ``exc_int3`` on the int3 that the
patching had left on ``pick_next_task_fair``; the guest printed soft-lockup
reports every 28 s and nothing else until the host's timeout.
"""

from __future__ import annotations

import re
from collections import deque

#: A printk line as the serial console prints it: ``[  386.876756] text``.
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d{6}\] ")

#: Kernel messages after which the guest is not expected to finish its command.
FATAL = re.compile(
    r"Kernel panic|BUG: soft lockup|hard LOCKUP|rcu: INFO: rcu_\w+ (?:self-)?detected stall"
    r"|Oops:|BUG: unable to handle|general protection fault|kernel BUG at"
)

#: A call-trace frame: `` func+0x4e/0x120``, optionally after ``? ``.
_FRAME = re.compile(r"^\s*(\?\s+)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")

#: Kernel console option added to every lab boot: levels 0-4 (emerg ... warning,
#: and the default level call traces use) reach the console, KERN_INFO does not.
CONSOLE_LOGLEVEL = "loglevel=5"


class GuestConsole:
    """Kernel console lines of one lab boot.

    Attributes:
        lines: the last ``keep`` kernel lines, time stamps included.
        fatal: the first line matching :data:`FATAL`, or None.
        preboot: the last lines printed before the kernel's first one.
        booted: a kernel console line was seen.
    """

    def __init__(self, keep: int = 400):
        self.lines: deque[str] = deque(maxlen=keep)
        self.fatal: str | None = None
        self.preboot: deque[str] = deque(maxlen=60)
        self.booted = False
        self._after_fatal: list[str] = []

    def feed(self, line: str) -> bool:
        """Take one output line of the VM; True when it is kept here rather than being the command's.

        Kept: kernel console lines, and everything before the kernel's first
        line (vng/virtme-run's own chatter under ``--verbose``, the boot
        loader's), in :attr:`preboot`: shown only when the VM fails to boot.
        """
        if not KERNEL_LINE.match(line):
            if self.booted:
                return False
            self.preboot.append(line.rstrip("\n"))
            return True
        self.booted = True
        text = line.rstrip("\n")
        self.lines.append(text)
        if self.fatal is None and FATAL.search(text):
            self.fatal = KERNEL_LINE.sub("", text)
        elif self.fatal is not None and len(self._after_fatal) < 200:
            self._after_fatal.append(KERNEL_LINE.sub("", text))
        return True

    def stuck_in(self, frames: int = 8) -> list[str]:
        """Function names of the first call trace after the fatal line, innermost first (``?`` frames skipped)."""
        out = []
        for text in self._after_fatal:
            m = _FRAME.match(text)
            if m and not m.group(1):
                out.append(m.group(2))
                if len(out) == frames:
                    break
        return out

    def summary(self) -> str:
        """One line for an error: the fatal message and where the CPU was, or ``""`` when none."""
        if self.fatal is None:
            return ""
        where = self.stuck_in()
        return f"guest kernel: {self.fatal}" + (f" (in {' <- '.join(where)})" if where else "")

    def text(self) -> str:
        """The kept kernel lines, one per line (for a console log file)."""
        return "\n".join(self.lines) + ("\n" if self.lines else "")
