"""A plain-Python model of the kernel's counting mode (``bpf/callpath_stack.h``, ``CALLPATH_AGGREGATE``).

Applied to a per-event trace, it computes the ``meta["aggregate"]`` the kernel
would have counted on the same calls, so tests can judge both modes on one
recording and compare verdicts. One event at a time, no numpy: it is the
reference, not the implementation.

Per thread (the tid; the idle task, tid 0, per CPU) a stack of open probed
frames, at most ``max_depth`` deep, each with its entry time and the first 4
distinct probed children in first-seen order:

* entry: the slot is noted as a child of the top frame; an inline site (entry
  only) is counted at once as a leaf path (0 ns) when the stack has room, and
  never pushed; beyond ``max_depth`` an entry is not pushed (``depth_overflow``)
  and the next return of the thread is taken as its return;
* return: the topmost frame of the same slot closes: its path (stack bottom up
  to it) gains a call and the duration, its function's log2 bucket a count,
  its child sequence (if any) an order row call; frames above it are dropped
  uncounted. No such frame: ``unmatched_returns``.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

#: mechanisms the BPF program records (its events are what counting mode replaces)
BPF_MECHANISMS = ("kprobe", "fentry", "inline-site")


def _bucket(ns: int) -> int:
    ns &= (1 << 64) - 1  # u64, as in the kernel
    return min(ns.bit_length() - 1, 63) if ns else 0


def aggregate_events(events: pd.DataFrame, max_depth: int = 16) -> tuple[dict, pd.DataFrame]:
    """Count ``events`` (an event table, columns of ``analysis.trace.SCHEMA``) as the kernel would.

    Returns:
        ``(aggregate, other_events)``: the ``meta["aggregate"]`` dict (by names) and
        the events of other mechanisms (boot function_graph, module-init kprobe
        events), which counting mode still records as events.
    """
    mech = events["mechanism"].astype(object) if "mechanism" in events else pd.Series("kprobe", index=events.index)
    bpf = mech.isin(BPF_MECHANISMS).to_numpy()
    ev = events[bpf].sort_values("seq", kind="stable") if "seq" in events else events[bpf]
    names = {}
    paths: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    orders: dict[tuple, int] = defaultdict(int)
    hist: dict[tuple, int] = defaultdict(int)
    threads: dict = {}
    overflow = unmatched = 0
    rows = zip(ev["kind"].tolist(), ev["func_id"].tolist(), ev["function"].astype(str).tolist(),
               ev["ts_ns"].tolist(), ev["tid"].tolist(), ev["cpu"].tolist(), mech[bpf].loc[ev.index].tolist())
    for kind, fid, name, ts, tid, cpu, m in rows:
        names[fid] = name
        st = threads.setdefault(tid if tid else ("cpu", cpu), {"ids": [], "t0": [], "seq": [], "over": 0})
        ids = st["ids"]
        if kind == 0:
            if ids and fid not in st["seq"][-1] and len(st["seq"][-1]) < 4:
                st["seq"][-1].append(fid)
            if m == "inline-site":
                if len(ids) < max_depth:
                    paths[tuple(ids) + (fid,)][0] += 1
                continue
            if len(ids) >= max_depth:
                st["over"] += 1
                overflow += 1
                continue
            ids.append(fid)
            st["t0"].append(int(ts))
            st["seq"].append([])
            continue
        if st["over"]:
            st["over"] -= 1
            continue
        pos = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] == fid), None)
        if pos is None:
            unmatched += 1
            continue
        ns = (int(ts) - st["t0"][pos]) & ((1 << 64) - 1)
        p = paths[tuple(ids[:pos + 1])]
        p[0] += 1
        p[1] += ns
        hist[(fid, _bucket(ns))] += 1
        if st["seq"][pos]:
            orders[(tuple(ids[:pos + 1]), tuple(st["seq"][pos]))] += 1
        del ids[pos:], st["t0"][pos:], st["seq"][pos:]

    def named(t):
        return [names[i] for i in t]

    agg = {
        "paths": [{"path": named(k), "calls": v[0], "sum_ns": v[1]} for k, v in paths.items()],
        "order": [{"parent": named(k), "children": named(s), "calls": v} for (k, s), v in orders.items()],
        "hist": [{"function": names[f], "bucket": b, "count": v} for (f, b), v in hist.items()],
        "max_depth": max_depth, "depth_overflow": overflow, "unmatched_returns": unmatched, "map_full": 0, "stale_frames": 0,
    }
    return agg, events[~bpf]


def aggregate_trace(trace, max_depth: int = 16):
    """A counting-mode copy of ``trace`` (an ``analysis.trace.Trace``): ``meta["mode"]``
    ``aggregate``, ``meta["aggregate"]`` from :func:`aggregate_events`, only non-BPF events left."""
    from callpath.analysis.trace import Trace

    agg, other = aggregate_events(trace.events, max_depth)
    return Trace(events=other.reset_index(drop=True), meta=dict(trace.meta, mode="aggregate", aggregate=agg))
