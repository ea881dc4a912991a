"""Counting mode (``--aggregate``): the kernel's counts as weighted call trees.

In counting mode the BPF program streams no events. Per thread (tid; the idle
task, tid 0, per CPU) it keeps a stack of the probed frames currently open and
counts, in BPF maps (``bpf/callpath_stack.h``, ``CALLPATH_AGGREGATE``):

* ``paths``: per distinct stack of probed functions (root first, the frame's
  own function last) the calls that closed with their own return and their
  summed duration (ns); an inline site is a leaf counted at its entry;
* ``order``: per call of a parent path that had probed children, the first 4
  distinct children in first-seen order, and how many parent calls had that
  sequence;
* ``hist``: per function, log2 buckets of duration (bucket b: [2^b, 2^(b+1)) ns).

``probes/record.py`` stores them by name in ``meta["aggregate"]`` (layout in
``/work/design-12.md``), with ``meta["mode"] == "aggregate"``. The event table
of such a trace holds only non-BPF evidence (boot function_graph, module-init
kprobe events).

:func:`build_aggregate_forest` turns them into an :class:`AggregateForest`: one
frame per distinct path (a trie node), weighted by its calls, so the matcher of
:mod:`analysis.conformance` judges counts the way it judges frames, and an
hour of counting stays as small as its distinct paths. A trie node with no
calls of its own (its frames never closed with their own return, or only order
rows name it) is incomplete: like a frame without its return, it proves no
nesting below it. The rows are a loop over distinct paths (kernel map entries,
at most 65,536), never over calls.

What counting cannot tell, and how the verdicts treat it:

* a callee frame is counted at its own return; a call whose return was lost is
  not counted (the per-event mode counts its entry inside complete callers);
* sibling order comes from first appearances only (:func:`sibling_order`);
* return values and skb identity are not kept: no ``returns``, no per-packet
  journeys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .calltree import FRAME_COLUMNS, CallForest, build_forest
from .instants import INLINE_SITE, INLINED

#: ``meta["mode"]`` of a counting-mode trace.
AGGREGATE = "aggregate"
#: Aggregate frames' ``thread`` key (they belong to no one thread).
THREAD = "aggregate"
#: Counters of the kernel side, copied into :attr:`AggregateForest.counters`.
COUNTERS = ("max_depth", "depth_overflow", "unmatched_returns", "map_full", "stale_frames")


def is_aggregate(meta: dict) -> bool:
    """True for the metadata of a counting-mode (``--aggregate``) trace."""
    return meta.get("mode") == AGGREGATE and isinstance(meta.get("aggregate"), dict)


def mode_label(meta: dict) -> str:
    """How a trace was recorded, for reports: ``"per-event"`` or ``"aggregate (counted in BPF maps)"``."""
    return "aggregate (counted in BPF maps)" if is_aggregate(meta) else "per-event"


def probe_kind(fp: dict | None) -> str | None:
    """The probe kind of a plan entry: ``fentry``, ``kprobe`` or ``inline-site`` (plan ``probe``;
    traces from before issue 12 have none: ``kprobe``, ``inline-site`` for inlined functions).
    None for a function that got no probe."""
    if not fp:
        return None
    if fp.get("probe"):
        return str(fp["probe"])
    if fp.get("status") == INLINED:
        return INLINE_SITE if any(s.get("func_id") is not None for s in fp.get("inline_sites", [])) else None
    return "kprobe" if fp.get("func_id") is not None else None


@dataclass
class AggregateForest(CallForest):
    """A :class:`CallForest` whose counting-mode frames are trie nodes weighted by calls.

    Attributes (besides :class:`CallForest`'s; ``weights`` is always set):
        order_node: int64 array, per order row the frame id of its parent path.
        order_calls: int64 array, per order row the parent calls with that sequence.
        order_children: per order row the child names in first-seen order (tuple of str, at most 4).
        counters: the kernel's ``max_depth``, ``depth_overflow``, ``unmatched_returns``,
            ``map_full``, ``stale_frames`` (ints, :mod:`probes.aggread`), plus ``paths`` (distinct paths counted).
        aggregate_frames: bool array, True for frames from the counts (False: from events).
    """

    order_node: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    order_calls: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    order_children: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    aggregate_frames: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))


def _trie(agg: dict) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Distinct paths as a trie of integer nodes, in preorder.

    Returns ``(parent, function, calls, sum_ns, slot, (order_node, order_calls,
    order_children))``, arrays indexed by node (parent -1 for roots, slot -1 when
    the paths carry no ``ids``). Children of a node come in their most common
    first-seen order (the order rows with the most calls first), then the
    others by calls, then by name. Python over distinct paths and their
    depth (at most 16), never over calls."""
    edge: dict[tuple[int, str], int] = {}
    parent: list[int] = []
    name: list[str] = []

    def node(path) -> int:
        cur = -1
        for x in path:
            key = (cur, str(x))
            nxt = edge.get(key)
            if nxt is None:
                nxt = edge[key] = len(name)
                parent.append(cur)
                name.append(key[1])
            cur = nxt
        return cur

    hits = [(node(p["path"]), int(p.get("calls", 0)), int(p.get("sum_ns", 0)), p.get("ids"))
            for p in agg.get("paths", []) if len(p["path"])]
    rows = [(node(r["parent"]), int(r.get("calls", 0)), tuple(dict.fromkeys(str(x) for x in r.get("children", []))))
            for r in agg.get("order", []) if len(r["parent"])]
    n = len(name)
    calls, sums, slot = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64), np.full(n, -1, dtype=np.int64)
    for i, c, t, ids in hits:
        calls[i] += c
        sums[i] += t
        if ids:
            slot[i] = int(ids[-1])
    rank: dict[int, dict[str, int]] = {}
    for i, _, kids in sorted(rows, key=lambda r: -r[1]):
        rk = rank.setdefault(i, {})
        for k in kids:
            rk.setdefault(k, len(rk))
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parent):
        children.setdefault(p, []).append(i)
    ncalls = calls.tolist()
    for p, kids in children.items():
        rk = rank.get(p, {})
        kids.sort(key=lambda k: (rk.get(name[k], len(rk)), -ncalls[k], name[k]))
    pre, stack = [], list(reversed(children.get(-1, [])))
    while stack:
        k = stack.pop()
        pre.append(k)
        stack.extend(reversed(children.get(k, [])))
    pre = np.array(pre, dtype=np.int64)
    new = np.empty(n + 1, dtype=np.int64)
    new[pre] = np.arange(n)
    new[-1] = -1  # index -1: no parent
    par = new[np.array(parent, dtype=np.int64)[pre]] if n else np.empty(0, dtype=np.int64)
    order = (new[np.array([r[0] for r in rows], dtype=np.int64)], np.array([r[1] for r in rows], dtype=np.int64),
             [r[2] for r in rows])
    return par, [name[i] for i in pre], calls[pre], sums[pre], slot[pre], order


def _site_slot(fp: dict, parent_fp: dict | None, parent: str | None) -> int:
    """The inline-site slot of an inline-site frame under ``parent``: the only probed site
    held by the parent's symbol, else the function's only probed site, else -1 (not told apart)."""
    sites = [s for s in fp.get("inline_sites", []) if s.get("func_id") is not None]
    if len(sites) == 1:
        return int(sites[0]["func_id"])
    holder = {parent, (parent_fp or {}).get("symbol")} - {None}
    held = [s for s in sites if s.get("symbol") in holder or str(s.get("symbol", "")).split(".")[0] in holder]
    return int(held[0]["func_id"]) if len(held) == 1 else -1


def aggregate_frames(agg: dict, plan: dict[str, dict]) -> tuple[pd.DataFrame, np.ndarray, tuple]:
    """Frames (columns :data:`analysis.calltree.FRAME_COLUMNS` plus ``site_slot``) of the counts.

    Args:
        agg: ``meta["aggregate"]`` (names, see the module docstring).
        plan: the probe plan's functions (``probe``, ``status``, ``inline_sites``).

    Returns:
        ``(frames, weights int64, (order_node, order_calls, order_children))``;
        one frame per trie node in preorder: ``start_ns`` is the preorder rank
        (not a time), ``duration_ns`` the mean (``sum_ns / calls``, NaN without
        calls or for inline sites), ``end_ns``/``retval`` NaN (not kept),
        ``complete`` when the path closed with its own return at least once
        (never for an inline site: an instant proves no nesting).
    """
    parent, func, calls, sums, slot, order = _trie(agg)
    n = len(func)
    kinds = {f: probe_kind(plan.get(f)) or "kprobe" for f in set(func)}
    kind = [kinds[f] for f in func]
    instant = np.array([k == INLINE_SITE for k in kind], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        dur = np.where((calls > 0) & ~instant, sums / np.maximum(calls, 1), np.nan)
    depth = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(parent >= 0):  # preorder: a parent's depth is known first
        depth[i] = depth[parent[i]] + 1
    site = slot.copy()
    for i in np.flatnonzero(instant & (slot < 0)):
        up = func[parent[i]] if parent[i] >= 0 else None
        site[i] = _site_slot(plan.get(func[i], {}), plan.get(up) if up else None, up)
    frames = pd.DataFrame({
        "frame": np.arange(n, dtype=np.int64), "parent": parent, "thread": THREAD, "function": func,
        "start_ns": np.arange(n, dtype=np.int64), "end_ns": np.nan, "duration_ns": dur,
        "depth": depth, "skb": np.uint64(0),
        "ifindex": np.int32(0), "netns": np.uint32(0), "retval": np.nan, "complete": (calls > 0) & ~instant,
        "tid": np.uint32(0), "cpu": np.uint32(0), "comm": "", "mechanism": kind, "site_slot": site,
    }, columns=FRAME_COLUMNS + ["site_slot"])
    return frames, calls, order


def build_aggregate_forest(meta: dict, events: pd.DataFrame | None = None) -> AggregateForest:
    """The weighted forest of a counting-mode trace: counts plus any non-BPF events.

    Args:
        meta: the trace metadata (``aggregate``, ``plan``).
        events: the trace's event table (boot function_graph, module-init kprobe
            events; may be empty or None); rebuilt by
            :func:`analysis.calltree.build_forest`, weight 1 per frame, ids first.

    Returns:
        An :class:`AggregateForest`; the event forest's defect counters are kept.
    """
    agg = meta.get("aggregate") or {}
    plan = meta.get("plan", {}).get("functions", {})
    af, w_agg, (onode, ocalls, okids) = aggregate_frames(agg, plan)
    ev = build_forest(events) if events is not None and len(events) else None
    m = len(ev.frames) if ev is not None else 0
    if m:
        base = ev.frames.copy()
        if "site_slot" not in base:
            base["site_slot"] = np.int64(-1)
        af = af.assign(frame=af["frame"] + m, parent=np.where(af["parent"] >= 0, af["parent"] + m, -1))
        cats = ["thread", "function", "comm", "mechanism"]
        frames = pd.concat([base.astype({c: object for c in cats}), af.astype({c: object for c in cats})],
                           ignore_index=True)
        for c in ("end_ns", "duration_ns", "retval"):
            frames[c] = pd.to_numeric(frames[c], errors="coerce")
    else:
        frames = af
    frames = frames.astype({c: "category" for c in ("thread", "function", "comm", "mechanism")})
    weights = np.concatenate([np.ones(m, dtype=np.int64), w_agg])
    counters = {k: int(agg.get(k, 0) or 0) for k in COUNTERS}
    counters["paths"] = int(len(agg.get("paths", [])))
    kw = {} if ev is None else {k: getattr(ev, k) for k in ("orphan_returns", "unterminated", "lost_returns",
                                                          "open_at_end", "time_backwards", "time_backwards_first")}
    return AggregateForest(frames=frames, weights=weights, order_node=onode + m, order_calls=ocalls,
                           order_children=okids, counters=counters,
                           aggregate_frames=np.r_[np.zeros(m, dtype=bool), np.ones(len(af), dtype=bool)], **kw)


def sibling_order(forest: AggregateForest, sibling_frames: list[np.ndarray], anchor: str) -> list[tuple[int, int]]:
    """Sibling order from the order table: the counting-mode twin of
    :func:`analysis.matching.sibling_order`, same rule on first appearances.

    Args:
        sibling_frames: per documented sibling, in document order, its matched frame ids.
        anchor: the function of the caller call the siblings are compared within.

    Returns:
        per sibling ``(in_order, out_of_order)`` in caller calls (weighted by the
        order rows' calls). A sibling stands in an anchor call's children by the
        child on its way down from the anchor: itself when it is a direct child,
        else the probed frame it ran under (for a step ``ip_local_out ->
        ip_output`` that is ``ip_local_out``, the head of its own chain). Per
        order row of an anchor path: a sibling takes part when its child is in
        the row; the row counts when at least two take part; walking the
        siblings in document order, one is in order when its child's first
        appearance comes after the previous in-order sibling's, else out of order.

    What first appearances cannot tell: a child an earlier sibling already stands
    by is not used again (``register_netdevice`` twice under ``veth_newlink``: the
    second is not judged; nor two siblings under one undocumented frame); nor are children
    beyond the first 4 distinct, and whether a sibling under another frame ran
    in that very call; frames from events (boot, module init) are judged by
    :func:`analysis.matching.sibling_order` (:func:`order_counts`).
    """
    from .matching import nearest_of  # noqa: PLC0415

    out = [[0, 0] for _ in sibling_frames]
    if forest.code_of(anchor) < 0 or not len(forest.order_node):
        return [tuple(x) for x in out]
    parents = forest.parents
    via: list[dict[int, set[str]]] = []  # per sibling: anchor node -> children it stands by
    for f in sibling_frames:
        f = np.asarray(f, dtype=np.int64)
        f = f[forest.aggregate_frames[f]]
        d: dict[int, set[str]] = {}
        for node, a in zip(f.tolist(), nearest_of(forest, f, anchor).tolist()):  # distinct paths, not calls
            if a < 0:
                continue
            while parents[node] != a:
                node = int(parents[node])
            d.setdefault(a, set()).add(forest.function_of(node))
        via.append(d)
    wanted = np.array(sorted(set().union(*[d.keys() for d in via])), dtype=np.int64)
    for r in np.flatnonzero(np.isin(forest.order_node, wanted)).tolist():
        node, calls, kids = int(forest.order_node[r]), int(forest.order_calls[r]), forest.order_children[r]
        pos, taken = [], set()
        for d in via:
            cand = d.get(node, set())
            here = [kids.index(k) for k in cand - taken if k in kids]
            pos.append(min(here) if here else None)
            taken |= cand
        if sum(p is not None for p in pos) < 2:
            continue
        t = -1
        for i, p in enumerate(pos):
            if p is None:
                continue
            if p > t:
                out[i][0] += calls
                t = p
            else:
                out[i][1] += calls
    return [tuple(x) for x in out]


def hist_table(meta: dict) -> pd.DataFrame:
    """``meta["aggregate"]["hist"]`` as a table: columns ``function``, ``bucket`` (log2 of ns),
    ``count``, ``lo_ns``, ``hi_ns`` (bucket b holds durations in [2^b, 2^(b+1)) ns;
    bucket 0 also 0 ns), summed over duplicate rows, by function then bucket."""
    rows = (meta.get("aggregate") or {}).get("hist", [])
    df = pd.DataFrame(rows, columns=["function", "bucket", "count"])
    if not len(df):
        return pd.DataFrame(columns=["function", "bucket", "count", "lo_ns", "hi_ns"])
    df = df.astype({"bucket": np.int64, "count": np.int64}).groupby(["function", "bucket"], sort=False,
                                                                     as_index=False)["count"].sum()
    df = df[df["count"] > 0].sort_values(["function", "bucket"], kind="stable").reset_index(drop=True)
    df["lo_ns"] = np.where(df["bucket"] > 0, np.left_shift(1, df["bucket"].to_numpy()), 0).astype(np.int64)
    df["hi_ns"] = np.left_shift(1, df["bucket"].to_numpy() + 1).astype(np.int64)
    return df


def mean_ns_by_function(meta: dict) -> dict[str, float]:
    """Mean duration (ns) per function over all its paths: ``sum(sum_ns) / sum(calls)``."""
    df = pd.DataFrame((meta.get("aggregate") or {}).get("paths", []), columns=["path", "calls", "sum_ns"])
    if not len(df):
        return {}
    df["function"] = [p[-1] if len(p) else "" for p in df["path"]]
    g = df.groupby("function")[["calls", "sum_ns"]].sum()
    g = g[g["calls"] > 0]
    return (g["sum_ns"] / g["calls"]).astype(float).to_dict()


def order_counts(forest: AggregateForest, sibling_frames: list[np.ndarray], anchor: str) -> list[tuple[int, int]]:
    """Sibling order in a counting-mode forest: :func:`sibling_order` over the counted
    frames plus :func:`analysis.matching.sibling_order` over the frames from events."""
    from .matching import sibling_order as by_events  # noqa: PLC0415

    fs = [np.asarray(f, dtype=np.int64) for f in sibling_frames]
    counted = sibling_order(forest, fs, anchor)
    evented = by_events(forest, [f[~forest.aggregate_frames[f]] for f in fs], anchor)
    return [(a + c, b + d) for (a, b), (c, d) in zip(counted, evented)]


def weighted_mean_ns(forest: CallForest, frames: np.ndarray) -> float | None:
    """Mean duration (ns) of ``frames`` weighted by the calls each stands for (a counted
    frame's ``duration_ns`` is already its mean); None when none has a duration."""
    frames = np.asarray(frames, dtype=np.int64)
    d = forest.frames["duration_ns"].to_numpy(dtype=float)[frames]
    w = (forest.weights[frames] if forest.weights is not None else np.ones(len(frames))).astype(float)
    ok = ~np.isnan(d) & (d >= 0) & (w > 0)
    return float((d[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else None
