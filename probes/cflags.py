"""The cflags that configure bpf/callpath.bpf.c for one run: settings never edit the C text."""

from __future__ import annotations

import os

from ..bpf import BPF_DIR, SLOTS
from .aggread import PATHS
from .fields import field_cflags
from .filters import Filters


def bpf_cflags(ringbuf_pages: int, fields: dict | None = None, aggregate: bool = False,
               filters: Filters | None = None) -> list[str]:
    """cflags that configure bpf/callpath.bpf.c (settings never edit the C text).

    ``fields`` is ``plan.fields`` (:func:`probes.fields.resolve_fields`): the
    kernel field offsets; fields missing from it are not read (offset -1).
    ``aggregate`` compiles counting mode; ``filters`` the in-kernel filters.

    Counting mode also gets the size of its path table (``aggread.PATHS``) and
    the number of possible CPUs (bcc's count, which sizes per-CPU values).

    Raises ``ValueError`` when ``ringbuf_pages`` is not a power of two.
    """
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError(f"ring buffer pages must be a power of two, got {ringbuf_pages}")
    counting = [f"-DCP_PATHS={PATHS}", f"-DCALLPATH_NCPUS={possible_cpus()}"] if aggregate else []
    return [f"-I{BPF_DIR}", f"-DCALLPATH_MAX_FUNCS={SLOTS}", f"-DCALLPATH_RINGBUF_PAGES={ringbuf_pages}",
            f"-DCALLPATH_AGGREGATE={int(aggregate)}", *counting, *(filters or Filters()).cflags(),
            *field_cflags(fields or {})]


def possible_cpus() -> int:
    """CPUs the kernel may bring online (/sys/devices/system/cpu/possible, as bcc reads it)."""
    try:
        from bcc.utils import get_possible_cpus  # noqa: PLC0415 - bcc comes from the system
    except ImportError:
        return os.cpu_count() or 1
    return len(get_possible_cpus())
