"""Packet journeys on whole columns: the run cutting and classification of
:func:`analysis.journeys.path_journeys` without a Python loop per packet.

Same rules as documented in :mod:`analysis.journeys`: a packet's visits (its
calls of the path's probed steps, time order) are cut into runs at each visit
of the entry step; the run with the most distinct steps (earliest on a tie) is
the journey; it is ``entry-only``, ``complete`` or ``partial``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

VISIT_COLUMNS = ["packet", "visit", "step", "function", "start_ns", "tid", "cpu", "ifindex", "netns", "via", "frame"]
JOURNEY_COLUMNS = ["packet", "status", "reason", "first_step", "last_step", "start_ns", "end_ns", "latency_ns",
                   "steps", "threads", "cpus"]


def _per_run_distinct(run: np.ndarray, values: np.ndarray, n_runs: int) -> np.ndarray:
    """How many distinct ``values`` each run holds (``run`` sorted ascending)."""
    if not len(run):
        return np.zeros(n_runs, dtype=np.int64)
    v = values.astype(np.int64)
    v = v - v.min()
    span = int(v.max()) + 1
    if n_runs * span < 2**62:
        keys = np.unique(run.astype(np.int64) * span + v)
        return np.bincount(keys // span, minlength=n_runs)
    pairs = np.unique(np.stack([run, v], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=n_runs)


def journeys_of(calls: pd.DataFrame, steps: np.ndarray, entry: str, exits: list[str],
                n_steps: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Visits and journeys of the packets in ``calls``.

    Args:
        calls: the packets' calls of the path's steps, sorted by ``packet`` then
            ``start_ns`` (columns of ``analysis.packets.PACKET_COLUMNS``).
        steps: the step number (str) of each row of ``calls``.
        entry: the entry step number; exits: exit step numbers.
        n_steps: number of distinct probed steps of the path.

    Returns:
        ``(visits, journeys)`` with columns :data:`VISIT_COLUMNS` and :data:`JOURNEY_COLUMNS`.
    """
    n = len(calls)
    names, step = np.unique(np.asarray(steps, dtype=object).astype(str), return_inverse=True)
    entry_code = int(np.searchsorted(names, entry)) if entry in names else -1
    exit_codes = np.array([np.searchsorted(names, e) for e in exits if e in names], dtype=np.int64)
    packet = calls["packet"].to_numpy().astype(np.int64)
    start = calls["start_ns"].to_numpy().astype(np.int64)
    new_packet = np.r_[True, packet[1:] != packet[:-1]]
    run = np.cumsum(new_packet | (step == entry_code)) - 1
    n_runs = int(run[-1]) + 1
    distinct = _per_run_distinct(run, step, n_runs)
    run_start = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    run_end = np.r_[run_start[1:], n] - 1
    run_packet = packet[run_start]
    # per packet the run with the most distinct steps, the earliest on a tie
    order = np.lexsort((np.arange(n_runs), -distinct, run_packet))
    firsts = order[np.r_[True, run_packet[order][1:] != run_packet[order][:-1]]]
    chosen = np.sort(firsts)
    lo, hi = run_start[chosen], run_end[chosen]
    fs, ls = step[lo], step[hi]
    d = distinct[chosen]
    entry_only = (d == 1) & (fs == entry_code) & (n_steps > 1)
    complete = ~entry_only & (fs == entry_code) & np.isin(ls, exit_codes)
    late_start = ~entry_only & ~complete & (fs != entry_code)
    status = np.where(entry_only, "entry-only", np.where(complete, "complete", "partial")).astype(object)
    func = calls["function"].astype(object).to_numpy()
    reason = np.full(len(chosen), "", dtype=object)
    for i in np.flatnonzero(~entry_only & ~complete).tolist():
        if late_start[i]:
            reason[i] = f"entry step {entry} not seen (first seen at {names[fs[i]]} {func[lo[i]]})"
        else:
            reason[i] = f"not seen after {names[ls[i]]} {func[hi[i]]} (not a last step)"
    reason[entry_only] = "seen only at the entry step"
    keep = np.zeros(n_runs, dtype=bool)
    keep[chosen] = True
    in_run = keep[run]
    sel = np.flatnonzero(in_run)
    srun = run[sel]
    which = np.searchsorted(chosen, srun)
    tid = calls["tid"].to_numpy().astype(np.int64)
    cpu = calls["cpu"].to_numpy().astype(np.int64)
    threads = _per_run_distinct(which, tid[sel], len(chosen))
    cpus = _per_run_distinct(which, cpu[sel], len(chosen))
    latency = np.where(complete, (start[hi] - start[lo]).astype(float), np.nan)
    journeys = pd.DataFrame({
        "packet": run_packet[chosen], "status": status, "reason": reason, "first_step": names[fs].astype(object),
        "last_step": names[ls].astype(object), "start_ns": start[lo], "end_ns": start[hi], "latency_ns": latency,
        "steps": d, "threads": threads, "cpus": cpus,
    }, columns=JOURNEY_COLUMNS)
    visits = pd.DataFrame({
        "packet": packet[sel], "visit": sel - lo[which], "step": names[step[sel]].astype(object),
        "function": func[sel], "start_ns": start[sel], "tid": tid[sel], "cpu": cpu[sel],
        "ifindex": calls["ifindex"].to_numpy().astype(np.int64)[sel],
        "netns": calls["netns"].to_numpy().astype(np.int64)[sel],
        "via": calls["via"].astype(object).to_numpy()[sel], "frame": calls["frame"].to_numpy().astype(np.int64)[sel],
    }, columns=VISIT_COLUMNS)
    return visits, journeys
