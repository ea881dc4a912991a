"""Rebuild per-thread call trees from entry/return events.

Events of one thread arrive in the order that thread emitted them (the ring
buffer preserves each producer's order), so a per-thread stack rebuilds the
nesting. The thread key is the tid, except for tid 0: every CPU's idle task
(swapper/N) has pid 0, so idle-context events are keyed by ``(0, cpu)``.

Imperfect input is expected and handled:

* a return whose function is deeper in the stack than the top: the frames above
  it lost their returns (kretprobe ``maxactive`` exhausted) and are closed as
  ``complete=False``;
* a return with no matching entry (the call began before probes attached) is
  counted in ``orphan_returns`` and otherwise ignored;
* entries still open when the trace ends stay ``complete=False`` with no end
  (counted in ``open_at_end``);
* a timestamp earlier than the previous event's of the same thread is a trace
  defect (clock or merge error): counted in ``time_backwards`` with the first
  example; a frame whose return is earlier than its entry gets no duration
  (``NaN``), so no negative duration reaches latency tables or plots.

Nesting rule (what the matcher in :mod:`analysis.conformance` relies on): a
frame *proves* that a later entry of the same thread ran inside it only when
the frame is ``complete`` (closed by its own return). Frames closed by an
enclosing return (lost kretprobe) or still open at trace end
(``complete=False``) say only that the function was entered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ENTRY, RETURN = 0, 1

FRAME_COLUMNS = [
    "frame", "parent", "thread", "function", "start_ns", "end_ns", "duration_ns",
    "depth", "skb", "ifindex", "netns", "retval", "complete", "tid", "cpu", "comm", "mechanism",
]


@dataclass
class CallForest:
    """All rebuilt frames.

    Attributes:
        frames: DataFrame, one row per call, columns :data:`FRAME_COLUMNS`;
            ``frame`` is the row's id (== its index), ``parent`` the enclosing
            frame's id or -1, ``duration_ns`` is ``end_ns - start_ns`` (NaN when
            incomplete), ``depth`` 0 for roots.
        orphan_returns: returns seen without an entry.
        unterminated: frames without their own return event: closed by an
            enclosing return (``lost_returns``) plus still open at trace end
            (``open_at_end``).
        lost_returns: frames closed by an enclosing frame's return (their own
            return was lost: kretprobe ``maxactive`` exhausted, ring buffer full).
        open_at_end: frames still open when the trace ended.
        time_backwards: events whose timestamp is earlier than the previous
            event of the same thread (a trace defect).
        time_backwards_first: the first such event, ``{"thread", "function",
            "seq", "ts_ns", "previous_ts_ns"}``, or None.
    """

    frames: pd.DataFrame
    orphan_returns: int = 0
    unterminated: int = 0
    lost_returns: int = 0
    open_at_end: int = 0
    time_backwards: int = 0
    time_backwards_first: dict | None = None

    def __post_init__(self):
        self._parents = self.frames["parent"].to_numpy() if len(self.frames) else np.empty(0, dtype=np.int64)
        self._funcs = self.frames["function"].to_numpy() if len(self.frames) else np.empty(0, dtype=object)
        self._complete = self.frames["complete"].to_numpy(dtype=bool) if len(self.frames) else np.empty(0, dtype=bool)

    def ancestors(self, frame: int) -> list[int]:
        """Frame ids enclosing ``frame``, nearest first."""
        out = []
        p = self._parents[frame]
        while p >= 0:
            out.append(int(p))
            p = self._parents[p]
        return out

    def function_of(self, frame: int) -> str:
        return self._funcs[frame]

    def is_complete(self, frame: int) -> bool:
        """True when ``frame`` was closed by its own return (so it proves nesting)."""
        return bool(self._complete[frame])

    def chain(self, frame: int) -> list[str]:
        """Function names from the outermost frame down to ``frame``."""
        return [self._funcs[f] for f in reversed(self.ancestors(frame))] + [self._funcs[frame]]

    def frames_of(self, function: str) -> np.ndarray:
        """Ids of every frame of ``function``, in start order."""
        return np.flatnonzero(self._funcs == function)


def thread_keys(events: pd.DataFrame) -> pd.Series:
    """The per-thread stack key of each event: ``"tid"`` or ``"0/cpu"`` for idle context,
    prefixed by the recording mechanism when it is not kprobe (boot-time
    function_graph events carry no tid: they are keyed per CPU)."""
    tid = events["tid"].astype("int64")
    key = tid.astype(str).where(tid != 0, "0/" + events["cpu"].astype(str))
    if "mechanism" in events:
        mech = events["mechanism"].fillna("kprobe")
        key = key.where(mech == "kprobe", mech + ":" + key)
    return key


def build_forest(events: pd.DataFrame) -> CallForest:
    """Rebuild call trees from an event table (columns of ``analysis.trace.SCHEMA``).

    Args:
        events: rows in arrival (``seq``) order.

    Returns:
        A :class:`CallForest`. Frames are ordered by start time within each thread
        and threads by first event.
    """
    ev = events.sort_values("seq", kind="stable") if "seq" in events else events
    keys = thread_keys(ev).to_numpy()
    kinds = ev["kind"].to_numpy()
    funcs = ev["function"].to_numpy()
    ts = ev["ts_ns"].to_numpy().astype(np.int64)
    skb = ev["skb"].to_numpy()
    ifi = ev["ifindex"].to_numpy()
    nsi = ev["netns"].to_numpy()
    ret = ev["retval"].to_numpy()
    tids = ev["tid"].to_numpy()
    cpus = ev["cpu"].to_numpy()
    comms = ev["comm"].to_numpy()
    mechs = ev["mechanism"].to_numpy() if "mechanism" in ev else np.full(len(ev), "kprobe", dtype=object)

    seqs = ev["seq"].to_numpy() if "seq" in ev else np.arange(len(ev))

    rows: list[list] = []
    stacks: dict[str, list[int]] = {}
    last_ts: dict[str, int] = {}
    orphans = 0
    lost = 0
    backwards = 0
    backwards_first = None
    for i in range(len(ev)):
        key = keys[i]
        stack = stacks.setdefault(key, [])
        prev = last_ts.get(key)
        if prev is not None and ts[i] < prev:
            backwards += 1
            if backwards_first is None:
                backwards_first = {"thread": str(key), "function": str(funcs[i]), "seq": int(seqs[i]),
                                   "ts_ns": int(ts[i]), "previous_ts_ns": int(prev)}
        last_ts[key] = int(ts[i]) if prev is None else max(prev, int(ts[i]))
        if kinds[i] == ENTRY:
            parent = stack[-1] if stack else -1
            fid = len(rows)
            rows.append([fid, parent, key, funcs[i], ts[i], None, None, len(stack),
                         int(skb[i]), int(ifi[i]), int(nsi[i]), None, False, int(tids[i]), int(cpus[i]), comms[i], mechs[i]])
            stack.append(fid)
            continue
        # return: find the innermost open frame of this function
        pos = next((j for j in range(len(stack) - 1, -1, -1) if rows[stack[j]][3] == funcs[i]), None)
        if pos is None:
            orphans += 1
            continue
        lost += len(stack) - pos - 1
        fid = stack[pos]
        row = rows[fid]
        row[5] = ts[i]
        # a return stamped before its entry (time ran backwards): no duration
        row[6] = ts[i] - row[4] if ts[i] >= row[4] else None
        row[11] = int(ret[i])
        row[12] = True
        del stack[pos:]
    frames = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    if len(frames):
        frames["duration_ns"] = pd.to_numeric(frames["duration_ns"], errors="coerce")
        frames["end_ns"] = pd.to_numeric(frames["end_ns"], errors="coerce")
        frames["retval"] = pd.to_numeric(frames["retval"], errors="coerce")
    open_at_end = sum(len(st) for st in stacks.values())
    return CallForest(frames=frames, orphan_returns=orphans, unterminated=lost + open_at_end, lost_returns=lost,
                      open_at_end=open_at_end, time_backwards=backwards, time_backwards_first=backwards_first)


def render_tree(forest: CallForest, root: int, max_lines: int = 40) -> list[str]:
    """Indented text of the tree under ``root``: ``function  duration ns`` per line."""
    fr = forest.frames
    children: dict[int, list[int]] = {}
    for fid, parent in zip(fr["frame"], fr["parent"]):
        children.setdefault(int(parent), []).append(int(fid))
    out: list[str] = []

    def walk(fid: int, depth: int):
        if len(out) >= max_lines:
            return
        d = fr.at[fid, "duration_ns"]
        out.append("  " * depth + f"{fr.at[fid, 'function']}" + (f"  {int(d)} ns" if pd.notna(d) else "  (no return)"))
        for c in children.get(fid, []):
            walk(c, depth + 1)

    walk(root, 0)
    return out
