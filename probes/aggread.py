"""Read the counting-mode maps of bpf/callpath_stack.h (``--aggregate``) after a run.

The kernel side keeps, per thread, a stack of the probed frames open now
(at most ``CP_DEPTH`` = 16) and counts, when a frame closes with its own return:

* ``paths`` (per-CPU hash: plain adds, summed here): key = the func ids (+1, 0 = none) of the stack, root first, the
  closing frame last; value = calls and summed duration (ns). An inline site
  (entry-only kprobe) is counted at its entry as a leaf, duration 0;
* ``orders``: key = the same path plus the frame's first 4 distinct probed
  children (id + 1, 16 bits each, first seen in the lowest bits); value = calls
  of that frame with that child sequence (frames with fewer than two distinct probed
  children: none, since order is judged only among two or more);
* ``hist``: per-CPU array, index ``func_id * 64 + b``: returns whose duration
  fell in [2^b, 2^(b+1)) ns (b = 0 also holds 0 ns);
* ``agg_err``: per-CPU counters: [0] entries beyond the depth limit (not
  pushed), [1] returns of a function not on the stack (dropped), [2] updates
  lost because ``paths``/``orders`` were full, [3] open frames found to have
  returned unseen (a kretprobe miss: at or below a new entry's stack address).
"""

from __future__ import annotations

import ctypes

BUCKETS = 64
DEPTH = 16


def _ids(arr) -> list[int]:
    return [int(v) - 1 for v in arr if int(v)]


def _children(seq: int) -> list[int]:
    return [((seq >> (16 * s)) & 0xFFFF) - 1 for s in range(4) if (seq >> (16 * s)) & 0xFFFF]


def _per_cpu_sum(v, *fields):
    """A per-CPU map value (bcc: an array, one element per CPU) summed over CPUs; a plain value as is."""
    items = list(v) if hasattr(v, "__len__") and not isinstance(v, ctypes.Structure) else [v]
    if not fields:
        return sum(int(getattr(x, "value", x)) for x in items)
    return tuple(sum(int(getattr(x, f)) for x in items) for f in fields)


def read_aggregate(bpf, func_ids) -> dict:
    """The counting maps as plain data, func ids = plan slots.

    Args:
        bpf: the bcc ``BPF`` object of a program compiled with ``CALLPATH_AGGREGATE=1``.
        func_ids: the slots whose latency histograms to read.

    Returns:
        ``{"paths": [{"ids", "calls", "sum_ns"}], "order": [{"parent", "children", "calls"}],
        "hist": [{"func_id", "bucket", "count"}], "max_depth", "depth_overflow",
        "unmatched_returns", "map_full", "stale_frames"}``; ``sum_ns`` in ns; lists sorted for stable output.
    """
    paths = []
    for k, v in bpf["paths"].items():
        calls, sum_ns = _per_cpu_sum(v, "calls", "sum_ns")
        paths.append({"ids": _ids(k.ids), "calls": calls, "sum_ns": sum_ns})
    order = [{"parent": _ids(k.ids), "children": _children(int(k.seq)), "calls": _per_cpu_sum(v)}
             for k, v in bpf["orders"].items()]
    hist_map = bpf["hist"]
    hist = []
    for fid in sorted({int(f) for f in func_ids if f is not None}):
        for b in range(BUCKETS):
            n = sum(int(x) for x in hist_map[ctypes.c_int(fid * BUCKETS + b)])
            if n:
                hist.append({"func_id": fid, "bucket": b, "count": n})
    err = bpf["agg_err"]
    errs = [sum(int(x) for x in err[ctypes.c_int(i)]) for i in range(4)]
    paths.sort(key=lambda p: p["ids"])
    order.sort(key=lambda o: (o["parent"], o["children"]))
    return {"paths": paths, "order": order, "hist": hist, "max_depth": DEPTH,
            "depth_overflow": errs[0], "unmatched_returns": errs[1], "map_full": errs[2],
            "stale_frames": errs[3]}
