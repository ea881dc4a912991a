"""callpath's BPF C sources, shipped as package data.

``callpath.bpf.c`` is the program; ``callpath_stack.h`` its per-thread stack
of probed frames and the counting done along it; ``callpath_event.h`` the one
event struct, mirrored in :mod:`callpath.probes.event`.
"""

import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
PROGRAM = BPF_DIR / "callpath.bpf.c"
EVENT_HEADER = BPF_DIR / "callpath_event.h"
#: Slots (handlers) the program defines; keep in step with SLOTS8(...) in callpath.bpf.c.
SLOTS = 128


def handler_names(slot: int) -> tuple[str, str]:
    """(entry, return) handler names for a slot, as defined by SLOT(b, k) in callpath.bpf.c."""
    return f"entry_{slot // 8}_{slot % 8}", f"ret_{slot // 8}_{slot % 8}"


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"[ \t]*$', re.M)


def program_source(path: Path = PROGRAM, _seen: frozenset = frozenset()) -> str:
    """The program's C text with this folder's own headers (``#include "x.h"``) pasted in.

    bcc compiles one text and rewrites map calls (``m.lookup(...)``) in it; pasting the
    headers in keeps that rewriting independent of how bcc treats included files, and
    ``--print-bpf`` shows everything compiled. Other includes (``<uapi/...>``) stay.

    Raises ``OSError`` when a file cannot be read, ``ValueError`` on an include cycle.
    """
    if path in _seen:
        raise ValueError(f"{path.name} includes itself")

    def paste(m: re.Match) -> str:
        local = BPF_DIR / m.group(1)
        if not local.is_file():
            return m.group(0)
        body = program_source(local, _seen | {path})
        return f"/* ---- {m.group(1)} (pasted by callpath.bpf.program_source) */\n{body}\n/* ---- end of {m.group(1)} */"

    return _LOCAL_INCLUDE.sub(paste, path.read_text())
