"""Packet identity: which recorded calls handled the same packet.

A packet is known to the probes only by its ``struct sk_buff *`` address (the
``skb`` column of entry events, read from the argument BTF names). An address
is one packet only within the skb's lifetime; the slab reuses it at once, so
one address carries many packets over a run. Lifetimes are cut like this:

*End of life* (:data:`FREE_FUNCTIONS`, net/core/skbuff.c): ``kfree_skbmem(skb)``
returns the ``struct sk_buff`` to its slab cache; every free path for a
non-NAPI skb ends there (``__kfree_skb``, ``kfree_skb_reason``, ``consume_skb``;
since 2.6.x). Since 5.12 (commit "skbuff: introduce NAPI skb cache") NAPI
frees may instead park the skb in a per-CPU cache with ``napi_skb_cache_put``
(``napi_consume_skb``, ``__kfree_skb_defer``), and ``napi_build_skb`` hands it
out again: both count as an end of life when recorded. A later call on the
same address starts a new packet.

*Forks* (:data:`FORK_FUNCTIONS`, net/core/skbuff.c): ``skb_clone``,
``skb_copy``, ``skb_copy_expand`` and ``__pskb_copy_fclone`` (``pskb_copy`` is
an inline wrapper of it in include/linux/skbuff.h since 3.x) return a new skb
for the same packet: the return value's address starts a new *lifetime*
joined to the original's *packet* (``parent`` names the original lifetime).
macvlan's broadcast delivers clones this way (drivers/net/macvlan.c).

*Hand-over* keeps the address: ``netif_rx``/``enqueue_to_backlog`` queue the
same skb for another softirq (perhaps on another CPU), NAPI and veth's GRO path
(``veth_xdp_rcv`` -> ``napi_gro_receive``) pass the same pointer, so a packet
moves between threads and CPUs under one id without extra help.

Modes: ``tracked`` when the trace holds free events (the plan probed a free
function); otherwise ``address-window``: with no end-of-life evidence a
lifetime also ends when the address is idle for more than ``window_ns`` or
when the same function runs on it again on the same device (ifindex, netns),
which is how a reused address usually shows. That is a guess, and reports say
so.

Calls whose skb was not read (no skb argument, or a compiler clone whose
argument registers are unknown) take the packet of their callees when those
handled exactly one packet (``via="callee"``: ``__netif_receive_skb_core``
around ``macvlan_handle_frame``), else, when no callee handled any packet, of
the nearest enclosing call that has one (``via="caller"``:
``macvlan_hash_lookup`` inside ``macvlan_start_xmit``). Softirq work that runs
nested inside a transmit call (``do_softirq`` on ``local_bh_enable``) can make
the caller guess wrong; such calls are labelled ``caller`` so readers can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .calltree import CallForest

#: Functions whose entry ends an skb's life (argument 1 is the skb). See module docstring.
FREE_FUNCTIONS = ("kfree_skbmem", "napi_skb_cache_put")
#: Functions whose return value is a new skb for the same packet.
FORK_FUNCTIONS = ("skb_clone", "skb_copy", "skb_copy_expand", "__pskb_copy_fclone", "pskb_copy")
#: Every packet-tracking function (probed for identity, never a documented step by itself).
TRACKING_FUNCTIONS = FREE_FUNCTIONS + FORK_FUNCTIONS

#: Assign packets on whole columns (:mod:`analysis.packet_columns`); False runs the per-call loop below.
COLUMNAR = True

#: Default idle time that ends an address's lifetime in ``address-window`` mode (ns).
DEFAULT_WINDOW_NS = 200_000_000

PACKET_COLUMNS = ["frame", "packet", "lifetime", "via", "function", "start_ns", "end_ns", "tid", "cpu",
                  "ifindex", "netns", "skb", "comm"]
LIFETIME_COLUMNS = ["lifetime", "packet", "parent", "skb", "start_ns", "end_ns", "born", "ended"]

_MASK64 = (1 << 64) - 1


@dataclass
class Packets:
    """Packet ids of the calls of one trace.

    Attributes:
        calls: DataFrame, one row per call (frame) that handled a packet, columns
            :data:`PACKET_COLUMNS`; ``via`` is ``arg`` (the skb argument) or
            ``caller``/``callee`` (inherited, see module docstring) or ``fork``
            ; times in ns.
        lifetimes: DataFrame, one row per skb lifetime, columns
            :data:`LIFETIME_COLUMNS`; ``born`` is ``first-seen`` or ``fork``,
            ``ended`` is ``free``, ``idle`` (window), ``repeat`` (same function
            on the same device again), ``reused`` (a fork returned this address), or ``trace-end``.
        mode: ``tracked`` or ``address-window``.
        window_ns: the idle window used in ``address-window`` mode.
        free_events / fork_events: counts of the tracking calls seen.
    """

    calls: pd.DataFrame
    lifetimes: pd.DataFrame
    mode: str
    window_ns: int = DEFAULT_WINDOW_NS
    free_events: int = 0
    fork_events: int = 0
    notes: list[str] = field(default_factory=list)

    def of_packet(self, packet: int) -> pd.DataFrame:
        """The calls of one packet, in time order."""
        return self.calls[self.calls["packet"] == packet].sort_values("start_ns", kind="stable")

    def describe(self) -> str:
        """One line on how identity was established."""
        if self.mode == "tracked":
            return (f"packets tracked by skb address between frees ({self.free_events} free, "
                    f"{self.fork_events} clone/copy events)")
        return (f"no skb free events in this trace: a packet is an skb address until it is idle "
                f"{self.window_ns / 1e6:g} ms or the same function sees it again on the same device (a guess)")


def packet_functions(plan: dict[str, dict]) -> set[str]:
    """Functions whose skb argument carries a packet (not a netlink message)."""
    return {n for n, fp in plan.items() if fp.get("skb_arg") and not fp.get("netlink")}


def assign_packets(forest: CallForest, plan: dict[str, dict], window_ns: int = DEFAULT_WINDOW_NS,
                   mode: str | None = None) -> Packets:
    """Give every packet-handling call of ``forest`` a packet id.

    Args:
        forest: rebuilt call trees (:func:`analysis.calltree.build_forest`).
        plan: the probe plan's functions (``name -> {skb_arg, netlink, ...}``).
        window_ns: idle time ending a lifetime when no free events exist (ns).
        mode: force ``tracked`` or ``address-window``; default: ``tracked``
            when any free event is in the trace.

    Returns:
        :class:`Packets`. Calls of rtnetlink handlers (whose skb is a netlink
        message) and of boot-time function_graph records get no packet.
    """
    fr = forest.frames
    empty = Packets(calls=pd.DataFrame(columns=PACKET_COLUMNS), lifetimes=pd.DataFrame(columns=LIFETIME_COLUMNS),
                    mode=mode or "address-window", window_ns=window_ns)
    if not len(fr):
        return empty
    netlink = {n for n, fp in plan.items() if fp.get("netlink")}
    kp = fr.loc[fr["mechanism"].isin(["kprobe", "fentry"]) & ~fr["function"].isin(netlink),  # the columns used: less to copy
                ["frame", "function", "skb", "start_ns", "end_ns", "complete", "retval"]]
    has_skb = kp[kp["skb"] != 0]
    frees = has_skb[has_skb["function"].isin(FREE_FUNCTIONS)]
    if mode is None:
        mode = "tracked" if len(frees) else "address-window"
    if COLUMNAR:  # issue 11: the same rules on whole columns (analysis/packet_columns.py); the loop below is its reference
        from .packet_columns import assign_columns  # noqa: PLC0415

        return assign_columns(forest, kp, has_skb, frees, mode, window_ns)

    # one time-ordered stream of address events: calls (at entry) and fork births (at return)
    stream: list[tuple[int, int, int, int]] = []  # (ts, order, frame, kind) kind 0 call, 1 fork-birth
    for fid, start in zip(has_skb["frame"].to_numpy(), has_skb["start_ns"].to_numpy()):
        stream.append((int(start), 0, int(fid), 0))
    forks = kp[kp["function"].isin(FORK_FUNCTIONS) & kp["complete"].astype(bool) & kp["retval"].notna()]
    for fid, end, rv in zip(forks["frame"].to_numpy(), forks["end_ns"].to_numpy(), forks["retval"].to_numpy()):
        if int(rv) != 0:
            stream.append((int(end), 1, int(fid), 1))
    stream.sort()

    skb_of = fr["skb"].to_numpy()
    func_of = fr["function"].to_numpy()
    ifindex_of, netns_of = fr["ifindex"].to_numpy().tolist(), fr["netns"].to_numpy().tolist()
    lifetimes: list[list] = []
    current: dict[int, int] = {}  # address -> lifetime
    last_seen: dict[int, int] = {}
    seen_keys: dict[int, set] = {}  # lifetime -> {(function, ifindex, netns)}
    lifetime_of_frame: dict[int, int] = {}
    born_fork: set[int] = set()

    def start(addr: int, ts: int, parent: int | None, born: str) -> int:
        lid = len(lifetimes)
        packet = lifetimes[parent][1] if parent is not None else lid
        lifetimes.append([lid, packet, -1 if parent is None else parent, addr, ts, ts, born, "trace-end"])
        current[addr] = lid
        seen_keys[lid] = set()
        last_seen[addr] = ts
        return lid

    def end(addr: int, why: str) -> None:
        lid = current.pop(addr, None)
        if lid is not None:
            lifetimes[lid][7] = why

    for ts, _, fid, kind in stream:
        if kind == 1:  # a fork returned: the new address starts a lifetime joined to the original
            parent = lifetime_of_frame.get(fid)
            addr = int(fr.at[fid, "retval"]) & _MASK64
            end(addr, "reused")
            lid = start(addr, ts, parent, "fork")
            born_fork.add(lid)
            continue
        addr = int(skb_of[fid])
        fn = func_of[fid]
        lid = current.get(addr)
        if lid is not None and mode == "address-window" and fn not in TRACKING_FUNCTIONS:
            key = (fn, ifindex_of[fid], netns_of[fid])
            if ts - last_seen[addr] > window_ns:
                end(addr, "idle")
                lid = None
            elif key in seen_keys[lid]:
                end(addr, "repeat")
                lid = None
        if lid is None:
            lid = start(addr, ts, None, "first-seen")
        if fn not in TRACKING_FUNCTIONS:
            seen_keys[lid].add((fn, ifindex_of[fid], netns_of[fid]))
        lifetime_of_frame[fid] = lid
        last_seen[addr] = ts
        lifetimes[lid][5] = ts
        if fn in FREE_FUNCTIONS:
            end(addr, "free")

    # calls without an skb: inherit from the nearest enclosing call, else from callees
    parents = fr["parent"].to_numpy()
    kp_ids = set(int(f) for f in kp["frame"].to_numpy())
    via: dict[int, str] = {f: "arg" for f in lifetime_of_frame}
    children_lts: dict[int, set[int]] = {}
    for fid, lid in lifetime_of_frame.items():
        p = parents[fid]
        while p >= 0:
            children_lts.setdefault(int(p), set()).add(lid)
            p = parents[p]
    for fid in sorted(kp_ids):
        if fid in lifetime_of_frame or skb_of[fid] != 0:
            continue
        if len(children_lts.get(fid, ())) == 1:
            lifetime_of_frame[fid], via[fid] = next(iter(children_lts[fid])), "callee"
            continue
        p = parents[fid]
        while p >= 0 and int(p) not in lifetime_of_frame:
            p = parents[p]
        if p >= 0 and not children_lts.get(fid):
            lifetime_of_frame[fid], via[fid] = lifetime_of_frame[int(p)], "caller"

    lt = pd.DataFrame(lifetimes, columns=LIFETIME_COLUMNS)
    ids = np.array(sorted(lifetime_of_frame), dtype=np.int64)
    calls = fr.loc[ids, ["frame", "function", "start_ns", "end_ns", "tid", "cpu", "ifindex", "netns", "skb", "comm"]].copy()
    calls["lifetime"] = [lifetime_of_frame[int(f)] for f in ids]
    calls["packet"] = lt["packet"].to_numpy()[calls["lifetime"].to_numpy()] if len(lt) else []
    calls["via"] = [via[int(f)] for f in ids]
    calls = calls.sort_values("start_ns", kind="stable").reset_index(drop=True)[PACKET_COLUMNS]
    return Packets(calls=calls, lifetimes=lt, mode=mode, window_ns=window_ns, free_events=int(len(frees)),
                   fork_events=int(len(forks)))
