"""The Python mirror of ``struct callpath_event`` (bpf/callpath_event.h): the only one.

``tests/test_event_layout.py`` compiles the C header with the host compiler and
checks that size and every field offset match this ctypes structure.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

EVENT_ENTRY = 0
EVENT_RETURN = 1
COMM_LEN = 16


class CallpathEvent(ctypes.Structure):
    """One ring-buffer record (40 bytes). Units: ``ts_ns`` in ns (CLOCK_MONOTONIC).

    ``arg`` is an entry's skb address or a return's return value (as u64); the
    thread's name is not in the record but in the ``comms`` map (:func:`comm_name`).
    """

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("arg", ctypes.c_uint64),
        ("tid", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("ifindex", ctypes.c_int32),
        ("netns", ctypes.c_uint32),
        ("func_id", ctypes.c_uint16),
        ("cpu", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class CallpathComm(ctypes.Structure):
    """Mirror of ``struct callpath_comm``: the value of the ``comms`` map (key: tid, u32)."""

    _fields_ = [("comm", ctypes.c_char * COMM_LEN)]


def comm_name(tid: int, cpu: int, comms: dict[int, bytes]) -> bytes:
    """The name of thread ``tid`` (as bytes, no NUL) from the ``comms`` map's contents.

    tid 0 is the idle task of ``cpu``, named ``swapper/<cpu>`` by the kernel
    (kernel/sched/core.c ``init_idle``, every version); a thread the map does not
    hold (it only returned while recorded, or the LRU dropped it) gets ``b""``.
    """
    if tid == 0:
        return b"swapper/%d" % cpu
    return comms.get(tid, b"")


def split_arg(kind: np.ndarray, arg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(skb u64, retval i64) columns from the records' ``kind`` and ``arg`` columns."""
    import numpy as np  # noqa: PLC0415

    ret = kind == EVENT_RETURN
    skb = np.where(ret, np.uint64(0), arg).astype(np.uint64)
    retval = np.where(ret, arg.view(np.int64), np.int64(0)).astype(np.int64)
    return skb, retval


#: Columns of a trace table, in order; ``seq`` is the ring-buffer arrival order.
TRACE_COLUMNS = ("seq", "ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval", "comm")


def trace_rows(batch: np.ndarray, base: int, comm) -> list[tuple]:
    """One tuple per record of ``batch`` (``EVENT_DTYPE``), in :data:`TRACE_COLUMNS` order.

    ``base``: the ``seq`` of the first record; ``comm(tid, cpu) -> bytes``: the thread's name.
    """
    skb, retval = split_arg(batch["kind"], batch["arg"])
    return [(base + i, int(e["ts_ns"]), int(e["kind"]), int(e["func_id"]), int(e["tid"]), int(e["tgid"]),
             int(e["cpu"]), int(skb[i]), int(e["ifindex"]), int(e["netns"]), int(retval[i]),
             comm(int(e["tid"]), int(e["cpu"]))) for i, e in enumerate(batch)]


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
        "formats": ["<u8", "<u8", "<u4", "<u4", "<i4", "<u4", "<u2", "<u2", "u1", "V3"],
        "offsets": [getattr(CallpathEvent, n).offset for n, _ in CallpathEvent._fields_],
        "itemsize": ctypes.sizeof(CallpathEvent),
    })
    return dt


#: numpy mirror of ``struct callpath_event`` (40 bytes): what the Recorder's ``sink`` receives,
#: one structured array per batch, decoded with ``numpy.frombuffer`` from the raw ring-buffer records.
EVENT_DTYPE = _event_dtype()
