"""Export a trace as Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing).

Layout (the "JSON Array/Object Format" of the Trace Event Format document):

* one track per thread: ``pid`` is the thread group id, ``tid`` a small
  number per thread key of :func:`analysis.calltree.thread_keys` (idle
  context per CPU, boot-time function_graph per CPU), named by ``M``
  (metadata) events ``thread_name``/``process_name``;
* one complete slice (``ph: "X"``) per call, ``ts``/``dur`` in microseconds
  from the first event (ns / 1000, fractional). A call without its own return
  ends where its last callee ends (at least 1 ns), and every slice is clipped
  to its parent, so slices on a track nest strictly;
* flow arrows (``ph: "s"`` then ``ph: "f"`` with ``bp: "e"``, one ``id`` per
  arrow, ``cat: "packet"``) from one call of a packet to its next call that is
  not nested in it (another thread, CPU or call tree), with packet ids from
  :mod:`analysis.packets`; both ends lie inside the slices they bind to.
  ``args`` of each slice carry skb, packet, ifindex, netns, cpu and retval.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .calltree import CallForest
from .packets import Packets


def _slice_bounds(fr: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (ns) per frame such that children lie inside parents."""
    start = fr["start_ns"].to_numpy().astype(np.int64)
    end_raw = pd.to_numeric(fr["end_ns"], errors="coerce").to_numpy()
    parent = fr["parent"].to_numpy().astype(np.int64)
    known = ~np.isnan(end_raw)
    end = np.where(known, np.nan_to_num(end_raw), start + 1).astype(np.int64)
    end = np.maximum(end, start + 1)
    for fid in range(len(fr) - 1, -1, -1):  # children were created after their parents
        p = parent[fid]
        if p >= 0 and not known[p]:
            end[p] = max(end[p], end[fid])
    for fid in range(len(fr)):
        p = parent[fid]
        if p >= 0:
            end[fid] = min(end[fid], end[p])
            start[fid] = min(max(start[fid], start[p]), end[fid])
    return start, end


def trace_events(forest: CallForest, packets: Packets | None = None) -> list[dict]:
    """The trace-event list for ``forest`` (and flows for ``packets``)."""
    fr = forest.frames
    if not len(fr):
        return []
    start, end = _slice_bounds(fr)
    t0 = int(start.min())
    us = lambda ns: (int(ns) - t0) / 1000.0  # noqa: E731
    keys = list(dict.fromkeys(fr["thread"]))
    tid_of = {k: i + 1 for i, k in enumerate(keys)}
    first = fr.groupby("thread", sort=False).first()
    out: list[dict] = []
    pid_of: dict[str, int] = {}
    for k in keys:
        row = first.loc[k]
        pid = int(row["tid"]) if str(k).isdigit() else 0
        pid_of[k] = pid
        label = f"{row['comm']} {k}" if str(k).isdigit() else f"{k} (idle or boot context, per CPU)"
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid_of[k], "args": {"name": label}})
    packet_of = {}
    if packets is not None and len(packets.calls):
        packet_of = dict(zip(packets.calls["frame"].astype(int), packets.calls["packet"].astype(int)))
    th = fr["thread"].to_numpy()
    for fid, fn in enumerate(fr["function"].to_numpy()):
        args = {"skb": hex(int(fr.at[fid, "skb"])), "ifindex": int(fr.at[fid, "ifindex"]), "netns": int(fr.at[fid, "netns"]),
                "cpu": int(fr.at[fid, "cpu"]), "complete": bool(fr.at[fid, "complete"])}
        if pd.notna(fr.at[fid, "retval"]):
            args["retval"] = int(fr.at[fid, "retval"])
        if fid in packet_of:
            args["packet"] = packet_of[fid]
        out.append({"ph": "X", "name": str(fn), "cat": str(fr.at[fid, "mechanism"]), "pid": pid_of[th[fid]],
                    "tid": tid_of[th[fid]], "ts": us(start[fid]), "dur": (int(end[fid]) - int(start[fid])) / 1000.0,
                    "args": args})
    if packet_of:
        parents = fr["parent"].to_numpy()

        def inside(child: int, anc: int) -> bool:
            p = parents[child]
            while p >= 0:
                if p == anc:
                    return True
                p = parents[p]
            return False

        flow = 0
        calls = packets.calls.sort_values(["packet", "start_ns"], kind="stable")
        for _, g in calls.groupby("packet", sort=False):
            frames = g["frame"].astype(int).to_list()
            for a, b in zip(frames, frames[1:]):
                if inside(b, a) or (th[a] == th[b] and start[b] < end[a]):
                    continue
                flow += 1
                common = {"name": f"packet {packet_of[a]}", "cat": "packet", "id": flow}
                out.append({**common, "ph": "s", "pid": pid_of[th[a]], "tid": tid_of[th[a]], "ts": us(start[a])})
                out.append({**common, "ph": "f", "bp": "e", "pid": pid_of[th[b]], "tid": tid_of[th[b]], "ts": us(start[b])})
    return out


def write_perfetto(forest: CallForest, packets: Packets | None, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``{"traceEvents": [...], "displayTimeUnit": "ns", "metadata": ...}`` to
    ``path``; return it. Raises ``OSError`` when it cannot be written."""
    path = Path(path)
    doc = {"traceEvents": trace_events(forest, packets), "displayTimeUnit": "ns",
           "metadata": {"callpath": {k: (meta or {}).get(k) for k in ("kernel", "where", "mechanism", "started")}}}
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return path


def export_trace(trace, path: str | Path) -> dict:
    """Rebuild calls and packets of a :class:`analysis.trace.Trace` and write the
    timeline to ``path``. Returns ``{"path", "slices", "flows", "threads"}``."""
    from .calltree import build_forest
    from .packets import assign_packets

    forest = build_forest(trace.events)
    packets = assign_packets(forest, trace.meta.get("plan", {}).get("functions", {}))
    out = write_perfetto(forest, packets, path, trace.meta)
    events = json.loads(out.read_text())["traceEvents"]
    return {"path": str(out), "slices": sum(e["ph"] == "X" for e in events),
            "flows": sum(e["ph"] == "s" for e in events), "threads": sum(e["ph"] == "M" for e in events)}
