"""Rebuild per-thread call trees from entry/return events, on whole columns.

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

How (no per-event Python loop on the common path): events are grouped by
thread with a stable sort; a thread's stack depth before each event is a
cumulative sum of +1 (entry) / -1 (return); each entry is paired with the next
event of its thread at the same depth (a stable sort by depth); its parent is
the latest earlier entry one level up (``searchsorted``). A thread whose depth
goes below zero or whose pairs name different functions (a lost or orphan
return) is rebuilt by the per-event stack algorithm above, that thread only.
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
            incomplete), ``depth`` 0 for roots. ``thread``, ``function``,
            ``comm`` and ``mechanism`` are categorical (dictionary-encoded).
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
        weights: calls each frame stands for (int64, indexed by frame id), or
            None: one call per frame (every per-event trace). Counting mode
            (:mod:`analysis.aggregate`) sets it: a frame is a distinct path.
    """

    frames: pd.DataFrame
    orphan_returns: int = 0
    unterminated: int = 0
    lost_returns: int = 0
    open_at_end: int = 0
    time_backwards: int = 0
    time_backwards_first: dict | None = None
    weights: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.frames)
        self._parents = self.frames["parent"].to_numpy(dtype=np.int64) if n else np.empty(0, dtype=np.int64)
        self._complete = self.frames["complete"].to_numpy(dtype=bool) if n else np.empty(0, dtype=bool)
        if n:
            self._fcodes, self._fnames = _codes(self.frames["function"])
        else:
            self._fcodes, self._fnames = np.empty(0, dtype=np.int32), np.empty(0, dtype=object)
        self._fcode_of = {str(name): i for i, name in enumerate(self._fnames)}
        self._depth = self.frames["depth"].to_numpy(dtype=np.int64) if n else np.empty(0, dtype=np.int64)
        self._by_function: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def parents(self) -> np.ndarray:
        """Parent frame id per frame (-1 for roots), int64, indexed by frame id."""
        return self._parents

    def count(self, frames: np.ndarray) -> int:
        """Calls the frame ids ``frames`` stand for: their number, or their summed :attr:`weights`."""
        if self.weights is None:
            return int(len(frames))
        return int(self.weights[np.asarray(frames, dtype=np.int64)].sum())

    @property
    def complete(self) -> np.ndarray:
        """Whether each frame closed with its own return, bool, indexed by frame id."""
        return self._complete

    @property
    def depths(self) -> np.ndarray:
        """Number of ancestors per frame, int64, indexed by frame id."""
        return self._depth

    @property
    def function_codes(self) -> np.ndarray:
        """Function of each frame as a code (see :meth:`code_of`), int32."""
        return self._fcodes

    def code_of(self, function: str) -> int:
        """The code of ``function`` in :attr:`function_codes`, or -2 when no frame has it."""
        return self._fcode_of.get(function, -2)

    def ancestors(self, frame: int) -> list[int]:
        """Frame ids enclosing ``frame``, nearest first."""
        out = []
        p = self._parents[frame]
        while p >= 0:
            out.append(int(p))
            p = self._parents[p]
        return out

    def function_of(self, frame: int) -> str:
        return str(self._fnames[self._fcodes[frame]])

    def is_complete(self, frame: int) -> bool:
        """True when ``frame`` was closed by its own return (so it proves nesting)."""
        return bool(self._complete[frame])

    def chain(self, frame: int) -> list[str]:
        """Function names from the outermost frame down to ``frame``."""
        return [self.function_of(f) for f in reversed(self.ancestors(frame))] + [self.function_of(frame)]

    def frames_of(self, function: str) -> np.ndarray:
        """Ids of every frame of ``function``, in start order (int64)."""
        code = self.code_of(function)
        if code < 0:
            return np.empty(0, dtype=np.int64)
        if self._by_function is None:
            order = np.argsort(self._fcodes, kind="stable")
            bounds = np.searchsorted(self._fcodes[order], np.arange(len(self._fnames) + 1))
            self._by_function = (order.astype(np.int64), bounds)
        order, bounds = self._by_function
        return order[bounds[code]:bounds[code + 1]]


def _codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary encoding of a string column: ``(codes int32, names object array)``; missing -> -1."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy().astype(np.int32), np.asarray(col.cat.categories, dtype=object)
    codes, uniques = pd.factorize(col, sort=False)
    return codes.astype(np.int32), np.asarray(uniques, dtype=object)


def _categorical(codes: np.ndarray, names: np.ndarray) -> pd.Categorical:
    """A categorical of ``names[codes]`` keeping only the names used."""
    used = np.zeros(len(names) + 1, dtype=bool)
    used[codes + 1] = True
    keep = np.flatnonzero(used[1:])
    remap = np.full(len(names) + 1, -1, dtype=np.int32)
    remap[keep + 1] = np.arange(len(keep), dtype=np.int32)
    return pd.Categorical.from_codes(remap[codes + 1], categories=pd.Index(names[keep].astype(str), dtype=object))


def thread_keys(events: pd.DataFrame) -> pd.Series:
    """The per-thread stack key of each event: ``"tid"`` or ``"0/cpu"`` for idle context,
    prefixed by the recording mechanism when it is not kprobe (boot-time
    function_graph events carry no tid: they are keyed per CPU)."""
    codes, names = _thread_codes(events)
    return pd.Series(names[codes], index=events.index, dtype=object)


#: Mechanisms of the BPF program: one ring buffer, so one ordering of events per thread.
BPF_STREAM = frozenset({"kprobe", "fentry", "inline-site"})


def _thread_codes(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Thread of each event as ``(codes, key strings)``; codes in order of first event."""
    tid = ev["tid"].to_numpy()
    if "mechanism" in ev:
        mcodes, mnames = _codes(ev["mechanism"])
    else:
        mcodes, mnames = np.zeros(len(ev), dtype=np.int32), np.array(["kprobe"], dtype=object)
    # tid (< 2**32) or 2**33 + cpu for the idle task, plus the recording stream above bit 34:
    # the BPF program's mechanisms (kprobe, fentry, inline-site) share one ring buffer and so
    # one stream (-1); another recording (function_graph at boot...) is a stream of its own
    stream = np.array([-1 if (isinstance(x, str) and x in BPF_STREAM) else i for i, x in enumerate(mnames)],
                      dtype=np.int64)
    num = tid.astype(np.int64)
    idle = np.flatnonzero(tid == 0)
    num[idle] = (1 << 33) + ev["cpu"].to_numpy()[idle].astype(np.int64)
    del idle
    num += (stream[mcodes] + 1) << 34
    codes, uniq = pd.factorize(num, sort=False)
    del num
    mech = (uniq >> 34) - 1
    low = uniq & ((1 << 34) - 1)
    names = []
    for m, v in zip(mech.tolist(), low.tolist()):
        key = str(v) if v < (1 << 33) else f"0/{v - (1 << 33)}"
        mname = "kprobe" if m < 0 or pd.isna(mnames[m]) else str(mnames[m])
        names.append(key if mname == "kprobe" else f"{mname}:{key}")
    return codes.astype(np.int32), np.array(names, dtype=object)


def _small(a: np.ndarray) -> np.ndarray:
    """``a`` (non-negative ints) in the narrowest dtype, so stable sorts use radix sort."""
    hi = int(a.max()) if len(a) else 0
    return a.astype(np.int16) if hi < 2**15 else a.astype(np.int32) if hi < 2**31 else a


def build_forest(events: pd.DataFrame) -> CallForest:
    """Rebuild call trees from an event table (columns of ``analysis.trace.SCHEMA``).

    Args:
        events: rows in arrival (``seq``) order; string columns may be
            categorical (``analysis.trace.read_trace`` reads them so).

    Returns:
        A :class:`CallForest`. Frame ids follow the entry events in ``seq``
        order (so frames are in start order within each thread).
    """
    # issue 10 hook: inline-site events (entry only, no return) become instant
    # leaf frames after the trees are rebuilt (analysis/instants.py)
    from .instants import attach_instants, split_instants  # noqa: PLC0415

    events, instants = split_instants(events)
    if len(instants):
        return attach_instants(build_forest(events), instants)
    n = len(events)
    seqs = np.asarray(events["seq"].to_numpy(), dtype=np.int64) if "seq" in events else np.arange(n, dtype=np.int64)
    by_seq = None if n == 0 or np.all(seqs[1:] >= seqs[:-1]) else np.argsort(seqs, kind="stable")
    ev = events if by_seq is None else events.iloc[by_seq]
    if by_seq is not None:
        seqs = seqs[by_seq]

    thread, thread_names = _thread_codes(ev)
    kinds = ev["kind"].to_numpy()
    is_entry = kinds == ENTRY
    fcodes, fnames = _codes(ev["function"])
    ts = np.ascontiguousarray(ev["ts_ns"].to_numpy()).view(np.int64)  # as the old astype: same bits, no copy
    entry_idx = np.flatnonzero(is_entry)  # event index of each frame, frame id == position
    m = len(entry_idx)
    fid_of_event = np.cumsum(is_entry, dtype=np.int64 if n >= 2**31 else np.int32) - 1

    # events grouped by thread, seq order within each thread
    order = np.argsort(_small(thread), kind="stable") if n else np.empty(0, dtype=np.int64)
    t_o = thread[order]
    k_o = is_entry[order]
    starts = np.flatnonzero(np.r_[True, t_o[1:] != t_o[:-1]]) if n else np.empty(0, dtype=np.int64)
    group_len = np.diff(np.r_[starts, n])
    backwards, first = _time_backwards(order, t_o, starts, ts, seqs)  # now: fewer arrays alive than later
    wide = np.int64 if n >= 2**31 else np.int32
    step = np.where(k_o, 1, -1).astype(np.int8)
    level = np.cumsum(step, dtype=wide)
    level -= np.repeat(level[starts] - step[starts], group_len)  # depth after each event, per thread
    level -= k_o  # an entry's depth; the depth a return goes back to
    del step

    parent = np.full(m, -1, dtype=np.int64)
    depth = np.zeros(m, dtype=np.int64)
    end_ev = np.full(m, -1, dtype=np.int64)  # event index of the frame's own return
    broken = np.zeros(len(thread_names), dtype=bool)
    broken[t_o[level < 0]] = True
    ok = ~broken[t_o]
    if ok.any():
        if ok.all():
            by_level = np.argsort(_small(level), kind="stable")
        else:
            pos = np.flatnonzero(ok)
            by_level = pos[np.argsort(_small(level[pos]), kind="stable")]
            del pos
        # by_level: (depth, position) order, so a thread's events of one depth are adjacent
        e = np.flatnonzero(k_o[by_level])
        pe, pr = by_level[e], by_level[np.minimum(e + 1, len(by_level) - 1)]
        paired = (e + 1 < len(by_level))
        del by_level, e
        paired &= ~k_o[pr]
        paired &= t_o[pr] == t_o[pe]
        paired &= level[pr] == level[pe]
        mismatched = paired & (fcodes[order[pr]] != fcodes[order[pe]])
        if mismatched.any():
            broken[t_o[pe[mismatched]]] = True
            keep = ~broken[t_o[pe]]
            pe, pr, paired = pe[keep], pr[keep], paired[keep]
        fids = fid_of_event[order[pe]]
        end_ev[fids[paired]] = order[pr[paired]]
        del pr, paired
        lvl_e = level[pe]
        depth[fids] = lvl_e
        # parent: the latest entry one level up, earlier in the same thread; the
        # entries are in (depth, position) order already, so their keys ascend
        key = lvl_e.astype(np.int64) * (n + 1) + pe
        up = np.flatnonzero(lvl_e > 0)
        hit = np.searchsorted(key, key[up] - (n + 1)) - 1
        parent[fids[up]] = fids[hit]
    orphans = lost = open_slow = 0
    for t in np.flatnonzero(broken):  # per-event stack, for threads with a lost or orphan return only
        o, l, s = _rebuild_thread(order[starts[t]:starts[t] + group_len[t]], kinds, fcodes, fid_of_event,
                                  parent, depth, end_ev)
        orphans, lost, open_slow = orphans + o, lost + l, open_slow + s
    del order, t_o, k_o, level, fid_of_event

    complete = end_ev >= 0
    open_fast = int(m - complete.sum()) - lost - open_slow
    open_at_end = open_fast + open_slow
    start_ns = ts[entry_idx]
    end_ns = ts[np.maximum(end_ev, 0)]
    dur = end_ns - start_ns
    good = complete & (dur >= 0)
    ret = ev["retval"].to_numpy()[np.maximum(end_ev, 0)].astype(np.int64)
    if complete.all():
        end_col, ret_col = end_ns, ret
    else:
        end_col, ret_col = np.where(complete, end_ns, np.nan), np.where(complete, ret, np.nan)
    dur_col = dur if good.all() else np.where(good, dur, np.nan)

    def col(name):
        return ev[name].to_numpy()[entry_idx]

    mcodes, mnames = _codes(ev["mechanism"]) if "mechanism" in ev else (
        np.zeros(n, dtype=np.int32), np.array(["kprobe"], dtype=object))
    ccodes, cnames = _codes(ev["comm"])
    frames = pd.DataFrame({
        "frame": np.arange(m, dtype=np.int64), "parent": parent,
        "thread": _categorical(thread[entry_idx], thread_names),
        "function": _categorical(fcodes[entry_idx], fnames),
        "start_ns": start_ns, "end_ns": end_col, "duration_ns": dur_col, "depth": depth,
        "skb": col("skb"), "ifindex": col("ifindex"), "netns": col("netns"), "retval": ret_col,
        "complete": complete, "tid": col("tid"), "cpu": col("cpu"),
        "comm": _categorical(ccodes[entry_idx], cnames), "mechanism": _categorical(mcodes[entry_idx], mnames),
    }, columns=FRAME_COLUMNS, copy=False)

    if first is not None:
        first = {"thread": str(thread_names[thread[first[0]]]), "function": str(fnames[fcodes[first[0]]]),
                 "seq": int(seqs[first[0]]), "ts_ns": int(ts[first[0]]), "previous_ts_ns": int(first[1])}
    return CallForest(frames=frames, orphan_returns=orphans, unterminated=lost + open_at_end, lost_returns=lost,
                      open_at_end=open_at_end, time_backwards=backwards, time_backwards_first=first)


def _rebuild_thread(idx, kinds, fcodes, fid_of_event, parent, depth, end_ev) -> tuple[int, int, int]:
    """The per-event stack algorithm (module docstring) over one thread's events ``idx``
    (event indices, seq order); fills ``parent``, ``depth``, ``end_ev`` by frame id.

    Returns ``(orphan returns, lost returns, still open at the end)``."""
    stack: list[int] = []
    funcs: list[int] = []
    orphans = lost = 0
    for i, kind, f, fid in zip(idx.tolist(), kinds[idx].tolist(), fcodes[idx].tolist(), fid_of_event[idx].tolist()):
        if kind == ENTRY:
            parent[fid] = stack[-1] if stack else -1
            depth[fid] = len(stack)
            stack.append(fid)
            funcs.append(f)
            continue
        pos = next((j for j in range(len(funcs) - 1, -1, -1) if funcs[j] == f), None)
        if pos is None:
            orphans += 1
            continue
        lost += len(stack) - pos - 1
        end_ev[stack[pos]] = i
        del stack[pos:], funcs[pos:]
    return orphans, lost, len(stack)


def _time_backwards(order, t_o, starts, ts, seqs) -> tuple[int, tuple[int, int] | None]:
    """Events stamped earlier than the latest earlier event of their thread.

    Returns ``(count, (event index, previous latest ts) of the first in seq order or None)``."""
    if not len(order):
        return 0, None
    ts_o = ts[order]
    if not np.any((ts_o[1:] < ts_o[:-1]) & (t_o[1:] == t_o[:-1])):
        return 0, None
    latest = pd.Series(ts_o).groupby(t_o).cummax().to_numpy()
    prev = np.r_[latest[:1], latest[:-1]]
    back = ts_o < prev
    back[starts] = False
    hits = np.flatnonzero(back)
    first = hits[np.argmin(seqs[order[hits]])]
    return int(len(hits)), (int(order[first]), int(prev[first]))


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
