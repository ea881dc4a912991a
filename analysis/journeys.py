"""Journeys: the documented steps each packet visited, per path, and their latency.

For one documented path, a packet's *visits* are its calls (from
:mod:`analysis.packets`) of the path's probed step functions, in time order,
each with timestamp, thread, CPU, device (ifindex) and netns. A packet may
cross a path more than once (``dev_hard_start_xmit`` runs for a macvlan and
again for its lower device), so the visits are cut into runs at each visit to
the path's *entry step* (its first probed step) and the run covering the most
distinct steps is the packet's journey on that path (the earliest on a tie).

Classification of a journey:

* ``complete``: starts at the entry step and ends at an *exit step*. Exit
  steps are the path's leaves among call steps; a leaf that was not probed
  (absent, not traceable) hands the role to its nearest probed enclosing step.
* ``partial``: seen at two or more steps, or at one step that is not the entry,
  but not from entry to an exit; ``reason`` says which end is missing.
* ``entry-only``: seen only at the entry step. Entry steps such as
  ``dev_hard_start_xmit`` are shared by every driver, so these packets took
  some other path; they are counted, not treated as lost.

Latency is measured between step *entries* (ns): whole path from the entry
step's entry to the last visited step's entry, hops between consecutive visits,
so a journey's hops add up to its whole-path latency, also across threads and
CPUs (``bpf_ktime_get_ns`` is one monotonic clock for all CPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .calltree import CallForest
from .conformance import Matcher
from .journey_columns import journeys_of
from .packets import Packets
from .spec import Path

VISIT_COLUMNS = ["packet", "visit", "step", "function", "start_ns", "tid", "cpu", "ifindex", "netns", "via", "frame"]
JOURNEY_COLUMNS = ["packet", "status", "reason", "first_step", "last_step", "start_ns", "end_ns", "latency_ns",
                   "steps", "threads", "cpus"]


@dataclass
class PathJourneys:
    """Journeys of packets on one documented path.

    Attributes:
        entry: the entry step number, or None when no step of the path is probed.
        exits: exit step numbers.
        visits: DataFrame, columns :data:`VISIT_COLUMNS`, the chosen run of each
            packet (``visit`` 0-based order, times ns).
        journeys: DataFrame, one row per packet, columns :data:`JOURNEY_COLUMNS`;
            ``status`` is ``complete``, ``partial`` or ``entry-only``;
            ``latency_ns`` is NaN unless complete.
    """

    entry: str | None
    exits: list[str]
    visits: pd.DataFrame
    journeys: pd.DataFrame

    def complete(self) -> pd.DataFrame:
        return self.journeys[self.journeys["status"] == "complete"]

    def hops(self) -> pd.DataFrame:
        """One row per hop between consecutive visits: ``packet, from, to, ns``."""
        v = self.visits.sort_values(["packet", "visit"])
        if len(v) < 2:
            return pd.DataFrame(columns=["packet", "from", "to", "ns"])
        label = v["step"] + " " + v["function"]
        same = v["packet"].to_numpy()[1:] == v["packet"].to_numpy()[:-1]
        out = pd.DataFrame({
            "packet": v["packet"].to_numpy()[1:],
            "from": label.to_numpy()[:-1],
            "to": label.to_numpy()[1:],
            "ns": np.diff(v["start_ns"].to_numpy().astype(np.int64)),
        })
        return out[same].reset_index(drop=True)

    def median_packet(self) -> int | None:
        """The complete journey whose latency is the (lower) median, or None."""
        c = self.complete().sort_values(["latency_ns", "packet"])
        return None if not len(c) else int(c.iloc[(len(c) - 1) // 2]["packet"])


def probed_steps(path: Path, plan: dict[str, dict]) -> list[tuple[str, str]]:
    """``(number, function)`` of the path's steps whose function was recorded, document order."""
    out = []
    for s in path.steps:
        fp = plan.get(s.function or "")
        if s.kind == "call" and fp and (fp.get("func_id") is not None or fp.get("observed_by")):
            out.append((s.number, s.function))
    return out


def exit_steps(path: Path, plan: dict[str, dict]) -> list[str]:
    """Exit step numbers (see module docstring), document order."""
    probed = {n for n, _ in probed_steps(path, plan)}
    calls = [s for s in path.steps if s.kind == "call" and s.function]
    parents_with_calls = {s.parent for s in calls}
    exits: list[str] = []
    for s in calls:
        if s.number in parents_with_calls:
            continue
        cur: str | None = s.number
        while cur is not None and cur not in probed:
            try:
                cur = path.step(cur).parent
            except KeyError:
                cur = None
        if cur is not None and cur not in exits:
            exits.append(cur)
    order = [s.number for s in path.steps]
    return sorted(exits, key=order.index)


def matched_frames(path: Path, forest: CallForest, plan: dict[str, dict],
                   attach_failed: dict[str, str] | None = None) -> dict[int, str]:
    """Frame id -> step number for every frame that satisfies a probed step of
    ``path`` where the document puts it (inside its documented callers), as
    :class:`analysis.conformance.Matcher` decides; a frame satisfying several
    steps gets the first in document order."""
    m = Matcher(forest, plan, attach_failed)
    out: dict[int, str] = {}
    numbers = {n for n, _ in probed_steps(path, plan)}
    for step in path.steps:
        if step.number not in numbers:
            continue
        for fid in m.match_frames(path, step)[0]:
            out.setdefault(int(fid), step.number)
    return out


def path_journeys(path: Path, plan: dict[str, dict], packets: Packets,
                  matched: dict[int, str] | None = None, classify=journeys_of) -> PathJourneys:
    """The journeys of every packet that visited a probed step of ``path``.

    Args:
        matched: frame id -> step number (:func:`matched_frames`); only those
            frames count as visits, so ``ip_output`` of unrelated traffic is not
            a visit of a path that documents it under ``ipvlan_process_v4_outbound``.
            None: every call of a step's function counts.
        classify: ``(calls, step, entry, exits, n_steps) -> (visits, journeys)``;
            the columnar :func:`analysis.journey_columns.journeys_of` (tests pass
            the per-packet loop it replaced, tests/reference_journeys.py).
    """
    steps = probed_steps(path, plan)
    entry = steps[0][0] if steps else None
    exits = exit_steps(path, plan)
    step_of: dict[str, str] = {}
    for number, fn in steps:
        step_of.setdefault(fn, number)
    calls = packets.calls[packets.calls["function"].isin(step_of)]
    if matched is not None:
        calls = calls[calls["frame"].isin(matched)]
    if not len(calls) or entry is None:
        return PathJourneys(entry, exits, pd.DataFrame(columns=VISIT_COLUMNS), pd.DataFrame(columns=JOURNEY_COLUMNS))
    calls = calls.sort_values(["packet", "start_ns"], kind="stable")
    n_steps = len({n for n, _ in steps})
    step = calls["frame"].map(matched) if matched is not None else calls["function"].astype(object).map(step_of)
    visits, journeys = classify(calls, step.to_numpy(), entry, exits, n_steps)
    return PathJourneys(entry, exits, visits, journeys)


def _q(series: pd.Series, q: float) -> float | None:
    return None if not len(series) else float(series.quantile(q))


def packet_stats(pj: PathJourneys) -> dict:
    """The ``packets`` block of one path in report.json.

    Returns:
        ``{count, partial, entry_only, cross_thread, partial_reasons, p50_ns,
        p90_ns, p99_ns, max_ns, hops: [{from, to, count, p50_ns, p99_ns}]}``;
        ``count`` is complete journeys (the latency samples), latencies in ns
        (None without samples), ``cross_thread`` complete journeys that ran on
        more than one thread or CPU.
    """
    j = pj.journeys
    c = pj.complete()
    lat = c["latency_ns"].astype(float)
    partial = j[j["status"] == "partial"]
    reasons: dict[str, int] = {}
    for r in partial["reason"]:
        key = r.split(" (first seen")[0] if r.startswith("entry step") else r
        reasons[key] = reasons.get(key, 0) + 1
    hops = pj.hops()
    hops = hops[hops["packet"].isin(c["packet"])] if len(hops) else hops
    hop_rows = []
    if len(hops):
        order = list(dict.fromkeys(zip(hops["from"], hops["to"])))
        g = hops.groupby(["from", "to"], sort=False)["ns"]
        for (a, b) in order:
            s = g.get_group((a, b)).astype(float)
            hop_rows.append({"from": a, "to": b, "count": int(len(s)), "p50_ns": float(s.quantile(0.5)),
                             "p99_ns": float(s.quantile(0.99))})
    return {
        "count": int(len(c)),
        "partial": int(len(partial)),
        "entry_only": int((j["status"] == "entry-only").sum()) if len(j) else 0,
        "cross_thread": int(((c["threads"] > 1) | (c["cpus"] > 1)).sum()) if len(c) else 0,
        "partial_reasons": reasons,
        "entry": pj.entry,
        "exits": pj.exits,
        "p50_ns": _q(lat, 0.5),
        "p90_ns": _q(lat, 0.9),
        "p99_ns": _q(lat, 0.99),
        "max_ns": None if not len(lat) else float(lat.max()),
        "hops": hop_rows,
    }


def journey_calls(packets: Packets, pj: PathJourneys, packet: int) -> pd.DataFrame:
    """Every call of ``packet`` (documented or not) from its journey's first visit
    on (so the waterfall shows where the packet went after the path): the rows of a waterfall, with a ``step`` column
    (the documented step number, or "" for calls the path does not name)."""
    v = pj.visits[pj.visits["packet"] == packet]
    calls = packets.of_packet(packet)
    if not len(v):
        return calls.assign(step="")
    t0 = int(v["start_ns"].min())
    sel = calls[calls["start_ns"] >= t0].copy()
    steps = dict(zip(v["frame"], v["step"]))
    sel["step"] = [steps.get(int(f), "") for f in sel["frame"]]
    return sel.reset_index(drop=True)


def handovers(paths: list[tuple[str, PathJourneys]]) -> dict[str, list[dict]]:
    """Where packets went next: for each path, the path on which its complete
    and partial journeys were next seen (by the same packet id, starting at or after the
    journey's last visit), with the hand-over time from the last visited step's
    entry to the next path's first visited step's entry.

    Args:
        paths: ``(key, journeys)`` per path, report order; keys are unique.
    Returns:
        key -> ``[{"to": key, "count", "p50_ns", "max_ns", "cross_thread"}]``, most
        frequent first (``cross_thread``: hand-overs that changed thread or CPU).
    """
    rows = []
    for key, pj in paths:
        j = pj.journeys
        if not len(j):
            continue
        first = pj.visits[pj.visits["visit"] == 0][["packet", "tid", "cpu"]]
        last = pj.visits.sort_values("visit").groupby("packet").tail(1)[["packet", "tid", "cpu"]]
        jj = j[["packet", "status", "start_ns", "end_ns"]].merge(first, on="packet").merge(
            last, on="packet", suffixes=("_first", "_last"))
        jj["key"] = key
        rows.append(jj)
    out: dict[str, list[dict]] = {key: [] for key, _ in paths}
    if not rows:
        return out
    allj = pd.concat(rows, ignore_index=True)
    done = allj[allj["status"] != "entry-only"]
    pairs = done.merge(allj[allj["status"] != "entry-only"], on="packet", suffixes=("", "_next"))
    pairs = pairs[(pairs["key"] != pairs["key_next"]) & (pairs["start_ns_next"] > pairs["end_ns"])]
    if not len(pairs):
        return out
    pairs = pairs.sort_values("start_ns_next").groupby(["key", "packet", "end_ns"], sort=False).head(1)
    pairs = pairs.assign(ns=pairs["start_ns_next"] - pairs["end_ns"],
                         moved=(pairs["tid_last"] != pairs["tid_first_next"]) | (pairs["cpu_last"] != pairs["cpu_first_next"]))
    for (key, nxt), g in pairs.groupby(["key", "key_next"], sort=False):
        out[key].append({"to": nxt, "count": int(len(g)), "p50_ns": float(g["ns"].quantile(0.5)),
                         "max_ns": float(g["ns"].max()), "cross_thread": int(g["moved"].sum())})
    for key in out:
        out[key].sort(key=lambda d: -d["count"])
    return out


def report_blocks(specs, forest: CallForest, plan: dict[str, dict], packets: Packets,
                  attach_failed: dict[str, str] | None = None, classify=journeys_of) -> list[tuple[PathJourneys, dict]]:
    """Journeys and the report's ``packets`` block for every path of ``specs``, in
    report order. Each block is :func:`packet_stats` plus ``next`` (hand-overs,
    :func:`handovers`) and ``median`` (the median packet's waterfall rows:
    ``{packet, latency_ns, calls: [{function, step, offset_ns, duration_ns, tid,
    cpu, ifindex, netns, comm, via}]}``, offsets from its first visit, or None)."""
    out: list[tuple[str, PathJourneys]] = []
    for spec in specs:
        for i, path in enumerate(spec.paths):
            pj = path_journeys(path, plan, packets, matched_frames(path, forest, plan, attach_failed), classify)
            out.append((f"{len(out)}", pj))
    nxt = handovers(out)
    blocks = []
    for key, pj in out:
        b = packet_stats(pj)
        b["next"] = [dict(h, to=int(h["to"])) for h in nxt.get(key, [])]
        b["median"] = None
        mp = pj.median_packet()
        if mp is not None:
            rows = journey_calls(packets, pj, mp)
            t0 = int(pj.visits.loc[pj.visits["packet"] == mp, "start_ns"].min())
            b["median"] = {
                "packet": mp,
                "latency_ns": float(pj.journeys.loc[pj.journeys["packet"] == mp, "latency_ns"].iloc[0]),
                "calls": [{"function": r["function"], "step": r["step"], "offset_ns": int(r["start_ns"]) - t0,
                           "duration_ns": None if pd.isna(r["end_ns"]) else int(r["end_ns"]) - int(r["start_ns"]),
                           "tid": int(r["tid"]), "cpu": int(r["cpu"]), "ifindex": int(r["ifindex"]),
                           "netns": int(r["netns"]), "comm": str(r["comm"]), "via": r["via"]}
                          for r in rows.to_dict("records")],
            }
        blocks.append((pj, b))
    return blocks
