"""callpath's BPF C sources, shipped as package data.

``callpath.bpf.c`` is the program; ``callpath_event.h`` the one event struct,
mirrored in :mod:`callpath.probes.event`.
"""

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
PROGRAM = BPF_DIR / "callpath.bpf.c"
EVENT_HEADER = BPF_DIR / "callpath_event.h"
#: Slots (handlers) the program defines; keep in step with SLOTS8(...) in callpath.bpf.c.
SLOTS = 128


def handler_names(slot: int) -> tuple[str, str]:
    """(entry, return) handler names for a slot, as defined by SLOT(b, k) in callpath.bpf.c."""
    return f"entry_{slot // 8}_{slot % 8}", f"ret_{slot // 8}_{slot % 8}"
