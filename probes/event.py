"""The Python mirror of ``struct callpath_event`` (bpf/callpath_event.h): the only one.

``tests/test_event_layout.py`` compiles the C header with the host compiler and
checks that size and every field offset match this ctypes structure.
"""

from __future__ import annotations

import ctypes

EVENT_ENTRY = 0
EVENT_RETURN = 1
COMM_LEN = 16


class CallpathEvent(ctypes.Structure):
    """One ring-buffer record (72 bytes). Units: ``ts_ns`` in ns (CLOCK_MONOTONIC)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("skb", ctypes.c_uint64),
        ("retval", ctypes.c_int64),
        ("tid", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("func_id", ctypes.c_uint32),
        ("ifindex", ctypes.c_int32),
        ("netns", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


#: Columns of a trace table, in order; ``seq`` is the ring-buffer arrival order.
TRACE_COLUMNS = ("seq", "ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval", "comm")


class FuncCfg(ctypes.Structure):
    """Mirror of ``struct func_cfg`` in bpf/callpath.bpf.c (8 bytes)."""

    _fields_ = [
        ("skb_arg", ctypes.c_uint8),
        ("skb_depth", ctypes.c_uint8),
        ("netdev_arg", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),  # 1: entry only (an inline site: no return)
        ("pad", ctypes.c_uint8 * 4),
    ]


def _event_dtype():
    import numpy as np  # noqa: PLC0415 - numpy only where batches are decoded

    dt = np.dtype({
        "names": [n for n, _ in CallpathEvent._fields_],
        "formats": ["<u8", "<u8", "<i8", "<u4", "<u4", "<u4", "<u4", "<i4", "<u4", "S16", "u1", "V7"],
        "offsets": [getattr(CallpathEvent, n).offset for n, _ in CallpathEvent._fields_],
        "itemsize": ctypes.sizeof(CallpathEvent),
    })
    return dt


#: numpy mirror of ``struct callpath_event`` (72 bytes): what the Recorder's ``sink`` receives,
#: one structured array per batch, decoded with ``numpy.frombuffer`` from the raw ring-buffer records.
EVENT_DTYPE = _event_dtype()
