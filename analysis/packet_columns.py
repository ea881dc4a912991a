"""Packet identity on whole columns: :func:`analysis.packets.assign_packets` without a
Python loop per call.

The rules are those of :mod:`analysis.packets` (skb lifetimes cut by frees,
forks, idle time and repeats; calls without an skb inheriting from callees or
callers). Here they are applied per skb address at once:

* the address events (calls at entry, fork births at return) are put in the
  same time order, then grouped by address;
* a lifetime starts at an address's first event, at a fork birth, after a
  free, after an idle gap (``address-window`` mode): all known from each
  event and the one before it on the same address;
* the one rule that depends on earlier cuts, a call repeating a
  ``(function, ifindex, netns)`` of the current lifetime, is scanned over the
  few calls that can repeat (a Python loop over integers, no objects);
* callee/caller inheritance walks the call trees one depth level at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_MASK64 = (1 << 64) - 1


def _prev_same(group: np.ndarray, key: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """For each position, the previous eligible position with the same ``group`` and ``key``, or -1."""
    n = len(group)
    out = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(eligible)
    if not len(idx):
        return out
    o = idx[np.lexsort((idx, key[idx], group[idx]))]
    same = (group[o][1:] == group[o][:-1]) & (key[o][1:] == key[o][:-1])
    out[o[1:][same]] = o[:-1][same]
    return out


def assign_columns(forest, kp: pd.DataFrame, has_skb: pd.DataFrame, frees: pd.DataFrame, mode: str,
                   window_ns: int):
    """The :class:`analysis.packets.Packets` of ``forest``; arguments as computed by
    :func:`analysis.packets.assign_packets` (kprobe frames of non-netlink functions,
    those with an skb, the free calls among them; the mode)."""
    from .packets import (FORK_FUNCTIONS, FREE_FUNCTIONS, LIFETIME_COLUMNS, PACKET_COLUMNS,  # noqa: PLC0415
                          TRACKING_FUNCTIONS, Packets)

    fr = forest.frames
    m = len(fr)
    codes = forest.function_codes
    tracking = np.isin(codes, [forest.code_of(f) for f in TRACKING_FUNCTIONS])
    freeing = np.isin(codes, [forest.code_of(f) for f in FREE_FUNCTIONS])
    forks = kp[kp["function"].isin(FORK_FUNCTIONS) & kp["complete"].astype(bool) & kp["retval"].notna()]

    # the stream: calls at entry (kind 0), fork births at return (kind 1), ordered (ts, kind, frame)
    c_fid = has_skb["frame"].to_numpy().astype(np.int64)
    rv = forks["retval"].to_numpy().astype(np.int64)  # as int(): truncates a float column's values
    born = rv != 0
    b_fid = forks["frame"].to_numpy().astype(np.int64)[born]
    fid = np.r_[c_fid, b_fid]
    kind = np.r_[np.zeros(len(c_fid), np.int8), np.ones(len(b_fid), np.int8)]
    ts = np.r_[has_skb["start_ns"].to_numpy().astype(np.int64), forks["end_ns"].to_numpy().astype(np.int64)[born]]
    addr = np.r_[fr["skb"].to_numpy().astype(np.uint64)[c_fid], rv[born].view(np.uint64) & np.uint64(_MASK64)]
    order = np.lexsort((fid, kind, ts))
    # grouped by address, stream order within
    g = order[np.argsort(addr[order], kind="stable")]
    A, T, K, F = addr[g], ts[g], kind[g], fid[g]
    S = len(g)
    pos = np.empty(S, dtype=np.int64)
    pos[order] = np.arange(S)  # stream position of each event
    P = pos[g]
    call = K == 0
    first = np.r_[True, A[1:] != A[:-1]] if S else np.zeros(0, bool)
    free_call = call & freeing[F]
    after_free = np.r_[False, free_call[:-1]] & ~first
    plain = call & ~tracking[F]  # a call the idle and repeat rules apply to
    start = first | ~call | after_free
    idle = np.zeros(S, dtype=bool)
    repeat = np.zeros(S, dtype=bool)
    if mode == "address-window" and S:
        idle = plain & ~start & (T - np.r_[T[:1], T[:-1]] > window_ns)
        start |= idle
        ifi = fr["ifindex"].to_numpy().astype(np.int64)[F]
        nsi = fr["netns"].to_numpy().astype(np.int64)[F]
        key = pd.MultiIndex.from_arrays([codes[F], ifi, nsi]).codes  # (function, ifindex, netns) as one code
        key = np.ravel_multi_index(tuple(np.asarray(c, dtype=np.int64) for c in key),
                                   tuple(int(c.max()) + 1 for c in key))
        prev = _prev_same(A, key, plain)
        static_before = np.maximum.accumulate(np.where(start, np.arange(S), -1))
        static_before = np.r_[-1, static_before[:-1]]
        cand = np.flatnonzero(plain & ~start & (prev >= 0) & (prev >= static_before))
        cut, last_cut = [], -1
        for i, p, s in zip(cand.tolist(), prev[cand].tolist(), static_before[cand].tolist()):
            if p >= max(s, last_cut):
                cut.append(i)
                last_cut = i
        repeat[cut] = True
        start |= repeat
    seg = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    ends = np.r_[starts[1:], S][:len(starts)] - 1
    lid_of_seg = np.empty(len(starts), dtype=np.int64)
    lid_of_seg[np.argsort(P[starts], kind="stable")] = np.arange(len(starts))
    lt_of_event = lid_of_seg[seg] if S else np.zeros(0, np.int64)
    lt_of_frame = np.full(m, -1, dtype=np.int64)
    callpos = np.full(m, -1, dtype=np.int64)
    lt_of_frame[F[call]] = lt_of_event[call]
    callpos[F[call]] = P[call]

    # lifetimes, in creation (stream) order
    nlt = len(starts)
    ended = np.empty(0, dtype=object)
    if nlt:
        nxt = np.r_[starts[1:], starts[0]]
        nxt_same = np.r_[~first[starts[1:]], False]  # the next lifetime is on the same address
        ended = np.where(free_call[ends], "free",
                         np.where(~nxt_same, "trace-end",
                                  np.where(~call[nxt], "reused", np.where(idle[nxt], "idle", "repeat")))).astype(object)
    fork_start = ~call[starts]
    par = np.full(nlt, -1, dtype=np.int64)
    pf = F[starts[fork_start]]
    ok = (lt_of_frame[pf] >= 0) & (callpos[pf] < P[starts[fork_start]])
    par_seg = np.where(ok, lt_of_frame[pf], -1)
    par[np.flatnonzero(fork_start)] = par_seg
    lt = pd.DataFrame({"lifetime": lid_of_seg, "parent": par, "skb": A[starts], "start_ns": T[starts],
                       "end_ns": T[ends], "born": np.where(fork_start, "fork", "first-seen").astype(object),
                       "ended": ended})
    lt = lt.set_index("lifetime").sort_index()
    parent = lt["parent"].to_numpy()
    packet = np.where(parent >= 0, parent, np.arange(nlt))
    while True:  # a fork of a fork: the packet is the first lifetime's
        nxt_p = np.where(parent[packet] >= 0, parent[packet], packet) if nlt else packet
        if np.array_equal(nxt_p, packet):
            break
        packet = nxt_p
    lt.insert(0, "packet", packet)
    lt = lt.reset_index()[LIFETIME_COLUMNS]

    # calls without an skb: from their callees' single lifetime, else from the nearest caller's
    parents = forest.parents
    depth = forest.depths
    kp_ids = np.zeros(m, dtype=bool)
    kp_ids[kp["frame"].to_numpy().astype(np.int64)] = True
    arg = lt_of_frame >= 0
    big = np.iinfo(np.int64).max
    lo = np.full(m, big, dtype=np.int64)
    hi = np.full(m, -1, dtype=np.int64)
    by_depth = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[by_depth], np.arange(int(depth.max()) + 2 if m else 1))
    for d in range(len(bounds) - 2, 0, -1):  # deepest first: descendants' lifetimes up to each parent
        f = by_depth[bounds[d]:bounds[d + 1]]
        p = parents[f]
        own_lo = np.minimum(lo[f], np.where(arg[f], lt_of_frame[f], big))
        own_hi = np.maximum(hi[f], np.where(arg[f], lt_of_frame[f], -1))
        np.minimum.at(lo, p, own_lo)
        np.maximum.at(hi, p, own_hi)
    final = lt_of_frame.copy()
    via = np.where(arg, 1, 0).astype(np.int8)  # 0 none, 1 arg, 2 callee, 3 caller
    todo = kp_ids & ~arg & (fr["skb"].to_numpy() == 0)
    callee = todo & (hi >= 0) & (lo == hi)
    final[callee] = lo[callee]
    via[callee] = 2
    orphan = todo & (hi < 0)
    near = np.full(m, -1, dtype=np.int64)  # the nearest ancestor holding a lifetime
    for d in range(1, len(bounds) - 1):  # shallowest first: callers decided before their callees
        f = by_depth[bounds[d]:bounds[d + 1]]
        p = parents[f]
        near[f] = np.where(final[p] >= 0, p, near[p])
        take = f[orphan[f] & (near[f] >= 0)]
        final[take] = final[near[take]]
        via[take] = 3
    ids = np.flatnonzero(final >= 0)
    calls = fr.loc[ids, ["frame", "function", "start_ns", "end_ns", "tid", "cpu", "ifindex", "netns", "skb", "comm"]].copy()
    calls["lifetime"] = final[ids]
    calls["packet"] = packet[final[ids]] if nlt else []
    calls["via"] = np.array(["", "arg", "callee", "caller"], dtype=object)[via[ids]]
    calls = calls.sort_values("start_ns", kind="stable").reset_index(drop=True)[PACKET_COLUMNS]
    return Packets(calls=calls, lifetimes=lt, mode=mode, window_ns=window_ns, free_events=int(len(frees)),
                   fork_events=int(len(forks)))
