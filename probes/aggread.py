"""Read the counting-mode maps of bpf/callpath_stack.h (``--aggregate``) after a run.

The kernel side keeps, per thread, a stack of the probed frames open now
(at most ``CP_DEPTH`` = 16), each with the id of its path, and counts, when a
frame closes with its own return:

* paths are interned (``intern_path``): id 0 is the empty path, and
  ``path_info[id]`` = (parent path id, func id + 1; 0 = id not handed out), so a
  path reads back root first by following parents; two ids may read back as the
  same path (two CPUs interned it at once) and are merged here;
* ``path_stats`` (per-CPU array by path id: plain adds, summed here): calls and
  summed duration (ns) of frames that closed on that path, and the first child
  order (``seq``, as in ``orders``) that CPU saw for the path with its calls,
  and a window of ``WINDOW`` log2 latency buckets of its last function:
  ``lat[i]`` returns whose duration fell in bucket ``lat_base - 1 + i`` (see
  ``hist``; ``lat_base`` 0: none yet; set on that CPU's first timed return).
  An inline site (entry-only kprobe) is counted at its entry as a leaf, duration 0;
* ``path_next``: ids handed out so far, one counter (atomic fetch-and-add), or
  one per CPU (kernels without BPF atomic fetch: ids ``1 + cpu + ncpus * k``);
* ``orders``: key = path id plus the frame's first 4 distinct probed
  children (id + 1, 16 bits each, first seen in the lowest bits); value = calls
  of that frame with that child sequence, for sequences other than the one its
  CPU counts in ``path_stats`` (frames with fewer than two distinct probed
  children: none, since order is judged only among two or more);
* ``hist``: per-CPU array, index ``func_id * 64 + b``: returns whose duration
  fell in [2^b, 2^(b+1)) ns (b = 0 also holds 0 ns) and outside their path's
  window (or on a path the full table left uncounted); a function's histogram
  is this plus the windows of every path ending in it;
* ``agg_err``: per-CPU counters: [0] entries beyond the depth limit (not
  pushed), [1] returns of a function not on the stack (dropped), [2] calls (or
  child orders) not counted because the path table (``PATHS`` ids) or ``orders`` was full, [3] open
  frames found to have returned unseen (a kretprobe miss: at or below a new
  entry's stack address).
"""

from __future__ import annotations

import ctypes

BUCKETS = 64
#: Latency buckets counted in place per path (CP_WINDOW in bpf/callpath_stack.h).
WINDOW = 8
DEPTH = 16
#: Path ids in the kernel's path table, the empty path (0) included (CP_PATHS, set by probes/loader.py).
PATHS = 8192


def _children(seq: int) -> list[int]:
    return [((seq >> (16 * s)) & 0xFFFF) - 1 for s in range(4) if (seq >> (16 * s)) & 0xFFFF]


def _per_cpu(v) -> list:
    """A map value as a list: a per-CPU one (bcc: an array, one element per CPU) as is, a plain one as [v]."""
    return list(v) if hasattr(v, "__len__") and not isinstance(v, ctypes.Structure) else [v]


def _per_cpu_sum(v, *fields):
    """A per-CPU map value summed over CPUs; a plain value as is."""
    items = _per_cpu(v)
    if not fields:
        return sum(int(getattr(x, "value", x)) for x in items)
    return tuple(sum(int(getattr(x, f)) for x in items) for f in fields)


def _id_bound(next_value) -> int:
    """One past the highest path id handed out, from ``path_next`` (one counter, or one per CPU)."""
    values = [int(getattr(x, "value", x)) for x in _per_cpu(next_value)]
    if len(values) == 1:
        return min(PATHS, values[0] + 1)
    return min(PATHS, 1 + len(values) * max(values))


def _resolve(info: dict[int, tuple[int, int]]) -> dict[int, list[int]]:
    """Path id -> func ids root first, from ``info``: id -> (parent id, func id + 1).
    Ids whose chain breaks (a parent never described) or loops are left out."""
    paths: dict[int, list[int]] = {0: []}

    def walk(pid: int) -> list[int] | None:
        chain = []
        while pid not in paths:
            if pid not in info or len(chain) > DEPTH:
                return None
            chain.append(pid)
            pid = info[pid][0]
        ids = paths[pid]
        for c in reversed(chain):
            ids = ids + [info[c][1] - 1]
            paths[c] = ids
        return ids

    for pid in info:
        walk(pid)
    return paths


def read_aggregate(bpf, func_ids) -> dict:
    """The counting maps as plain data, func ids = plan slots.

    Args:
        bpf: the bcc ``BPF`` object of a program compiled with ``CALLPATH_AGGREGATE=1``.
        func_ids: the slots whose latency histograms to read.

    Returns:
        ``{"paths": [{"ids", "calls", "sum_ns"}], "order": [{"parent", "children", "calls"}],
        "hist": [{"func_id", "bucket", "count"}], "max_depth", "depth_overflow",
        "unmatched_returns", "map_full", "stale_frames"}``; ``sum_ns`` in ns; paths that read back
        alike merged, paths never counted left out; lists sorted for stable output.
    """
    bound = _id_bound(bpf["path_next"][ctypes.c_int(0)])
    info_map, stats_map = bpf["path_info"], bpf["path_stats"]
    info = {}
    for pid in range(1, bound):
        v = info_map[ctypes.c_int(pid)]
        if int(v.func):
            info[pid] = (int(v.parent), int(v.func))
    resolved = _resolve(info)
    counted: dict[tuple, list[int]] = {}
    orders: dict[tuple, int] = {}
    lat: dict[tuple[int, int], int] = {}  # (func id, bucket) -> returns
    for pid, ids in resolved.items():
        if not ids:
            continue
        per_cpu = stats_map[ctypes.c_int(pid)]
        calls, sum_ns = _per_cpu_sum(per_cpu, "calls", "sum_ns")
        if not calls:
            continue
        acc = counted.setdefault(tuple(ids), [0, 0])
        acc[0] += calls
        acc[1] += sum_ns
        for cpu in _per_cpu(per_cpu):
            if int(cpu.seq_calls):
                key = (tuple(ids), tuple(_children(int(cpu.seq))))
                orders[key] = orders.get(key, 0) + int(cpu.seq_calls)
            base = int(cpu.lat_base) - 1
            for i in range(WINDOW) if base >= 0 else ():
                if int(cpu.lat[i]) and base + i < BUCKETS:
                    key = (ids[-1], base + i)
                    lat[key] = lat.get(key, 0) + int(cpu.lat[i])
    paths = [{"ids": list(k), "calls": c, "sum_ns": ns} for k, (c, ns) in counted.items()]
    for k, v in bpf["orders"].items():
        parent = resolved.get(int(k.path))
        if parent:
            key = (tuple(parent), tuple(_children(int(k.seq))))
            orders[key] = orders.get(key, 0) + _per_cpu_sum(v)
    order = [{"parent": list(p), "children": list(c), "calls": n} for (p, c), n in orders.items()]
    hist_map = bpf["hist"]
    hist = []
    for fid in sorted({int(f) for f in func_ids if f is not None}):
        for b in range(BUCKETS):
            n = sum(int(x) for x in hist_map[ctypes.c_int(fid * BUCKETS + b)]) + lat.pop((fid, b), 0)
            if n:
                hist.append({"func_id": fid, "bucket": b, "count": n})
    err = bpf["agg_err"]
    errs = [sum(int(x) for x in err[ctypes.c_int(i)]) for i in range(4)]
    paths.sort(key=lambda p: p["ids"])
    order.sort(key=lambda o: (o["parent"], o["children"]))
    return {"paths": paths, "order": order, "hist": hist, "max_depth": DEPTH,
            "depth_overflow": errs[0], "unmatched_returns": errs[1], "map_full": errs[2],
            "stale_frames": errs[3]}


def plan_slots(plan) -> list[int]:
    """The func ids (slots) a plan probes: its functions' and their inline sites' (for :func:`read_aggregate`)."""
    return ([fp.func_id for fp in plan.probed()]
            + [s["func_id"] for fp in plan.probed() for s in fp.inline_sites if s.get("func_id") is not None])
