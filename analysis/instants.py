"""Inline-site events in the call trees: instant leaf frames, never a duration.

An inlined function (plan status ``inlined``, :mod:`probes.inline`) is
probed by an entry-only kprobe at each of its inline sites (``symbol+offset``);
its events have mechanism :data:`INLINE_SITE` and no return, because an inline
site is a point in the holding function's code, not a call.

The contract with :mod:`analysis.calltree` and :mod:`analysis.conformance`:

* :func:`split_instants` takes these events out before the trees are rebuilt
  (they would otherwise look like calls that lost their return);
* :func:`attach_instants` adds each one as a leaf frame under the innermost
  *complete* frame of its thread that encloses its timestamp: ``complete``
  False, ``end_ns``/``duration_ns``/``retval`` NaN (no duration is ever
  invented), ``mechanism`` ``inline-site``, and its slot in ``site_slot``
  (-1 for every other frame). An instant never encloses anything, so it proves
  nothing about nesting below it;
* the step of an inlined function is ``observed`` when an instant of it sits
  inside the documented callers' complete frames; :func:`site_detail` writes
  the evidence ("inlined into ...; seen at inline site macvlan_start_xmit+33
  12×"); a documented caller that is inlined is skipped when matching its
  callees (:func:`is_inlined`), as an ``absent`` one always was.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

#: The ``mechanism`` of inline-site events and frames (``analysis.trace.MECHANISMS``).
INLINE_SITE = "inline-site"
#: Plan status of a function found inlined in DWARF (``probes.plan``).
INLINED = "inlined"


def split_instants(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(other events, inline-site events)`` of an event table (columns of ``analysis.trace.SCHEMA``)."""
    if "mechanism" not in events or not len(events):
        return events, events.iloc[0:0]
    is_site = (events["mechanism"].astype(object) == INLINE_SITE).to_numpy()
    if not is_site.any():
        return events, events.iloc[0:0]
    return events[~is_site], events[is_site]


def attach_instants(forest, instants: pd.DataFrame):
    """A copy of ``forest`` (an ``analysis.calltree.CallForest``) with ``instants`` as leaf frames.

    Args:
        forest: trees rebuilt from the other events.
        instants: inline-site events (``kind`` entry), any order.

    Returns:
        A CallForest of the same class whose frames gain one row per instant
        (ids after the existing ones) and the column ``site_slot`` (the event's
        ``func_id`` for instants, -1 otherwise). The parent is the innermost
        complete frame of the same thread with ``start_ns <= ts <= end_ns``
        (the thread key is the kprobe one: same tid, or ``0/cpu``); -1 when none.
    """
    from .calltree import thread_keys  # noqa: PLC0415

    frames = forest.frames
    base = frames.copy()
    base["site_slot"] = np.int64(-1)
    if not len(instants):
        return dataclasses.replace(forest, frames=base)
    ev = instants.sort_values("ts_ns", kind="stable") if "ts_ns" in instants else instants
    keys = thread_keys(ev.assign(mechanism="kprobe")).to_numpy().astype(str)
    ts = ev["ts_ns"].to_numpy().astype(np.int64)
    parent = np.full(len(ev), -1, dtype=np.int64)
    if len(frames):
        thread = frames["thread"].astype(str).to_numpy()
        complete = frames["complete"].to_numpy(dtype=bool)
        start = frames["start_ns"].to_numpy().astype(np.int64)
        end = frames["end_ns"].to_numpy(dtype=float)
        parents = frames["parent"].to_numpy().astype(np.int64)
        for key in np.unique(keys):
            cand = np.flatnonzero((thread == key) & complete)
            if not len(cand):
                continue
            cand = cand[np.argsort(start[cand], kind="stable")]
            where = np.flatnonzero(keys == key)
            pos = np.searchsorted(start[cand], ts[where], side="right") - 1
            for w, p in zip(where.tolist(), pos.tolist()):
                f = int(cand[p]) if p >= 0 else -1
                # frames nest: walk out from the latest frame started before ts
                while f >= 0 and not (complete[f] and end[f] >= ts[w]):
                    f = int(parents[f])
                parent[w] = f
    m = len(frames)
    depth = frames["depth"].to_numpy().astype(np.int64) if m else np.empty(0, dtype=np.int64)
    rows = pd.DataFrame({
        "frame": np.arange(m, m + len(ev), dtype=np.int64), "parent": parent, "thread": keys,
        "function": ev["function"].astype(str).to_numpy(), "start_ns": ts, "end_ns": np.nan,
        "duration_ns": np.nan, "depth": np.where(parent >= 0, depth[np.maximum(parent, 0)] + 1 if m else 0, 0),
        "skb": ev["skb"].to_numpy(), "ifindex": ev["ifindex"].to_numpy(), "netns": ev["netns"].to_numpy(),
        "retval": np.nan, "complete": False, "tid": ev["tid"].to_numpy(), "cpu": ev["cpu"].to_numpy(),
        "comm": ev["comm"].astype(str).to_numpy(), "mechanism": INLINE_SITE,
        "site_slot": ev["func_id"].to_numpy().astype(np.int64),
    })
    cats = [c for c in ("thread", "function", "comm", "mechanism") if c in base]
    out = pd.concat([base.astype({c: object for c in cats}), rows[base.columns]], ignore_index=True)
    for c in ("end_ns", "duration_ns", "retval"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    out = out.astype({c: "category" for c in cats})
    return dataclasses.replace(forest, frames=out)


def is_inlined(fp: dict | None) -> bool:
    """True for a plan entry (dict) of an inlined function: its frames are instants and enclose nothing."""
    return bool(fp) and fp.get("status") == INLINED


def site_label(fp: dict, slot: int) -> str:
    """``symbol+offset`` of the inline site probed in ``slot`` (``#slot`` when unknown)."""
    if slot < 0:
        return "a site not told apart"
    for s in fp.get("inline_sites", []):
        if s.get("func_id") == slot:
            return s.get("probe") or f"{s['symbol']}+{s['offset']}"
    return f"#{slot}"


def site_detail(fp: dict, frames: pd.DataFrame, matched, weights=None) -> str:
    """Evidence of an inlined step: where it is inlined and which sites fired, how often.

    Args:
        fp: the function's plan entry (status ``inlined``, ``inline_sites``).
        frames: the forest's frames (with ``site_slot``).
        matched: ids of the frames that satisfied the step.
        weights: calls per frame id (counting mode, ``analysis.aggregate``), or None: one each.

    Returns:
        ``"inlined into macvlan_start_xmit; seen at inline site macvlan_start_xmit+33
        12× (entry only: an inline site has no return, no duration)"``.
    """
    holders = list(dict.fromkeys(s["symbol"] for s in fp.get("inline_sites", [])))
    slots = frames["site_slot"].to_numpy()[np.asarray(matched, dtype=np.int64)] if "site_slot" in frames else []
    if weights is None:
        counts = pd.Series(slots).value_counts()
    else:
        counts = pd.Series(np.asarray(weights)[np.asarray(matched, dtype=np.int64)]).groupby(np.asarray(slots)).sum()
    seen = ", ".join(f"{site_label(fp, int(k))} {int(v)}×" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"inlined into {', '.join(holders)}; seen at inline site{'s' if len(counts) > 1 else ''} {seen} "
            "(entry only: an inline site has no return, no duration)")
