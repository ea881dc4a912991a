"""Column-wise matching of frames against documented callers (used by :mod:`analysis.conformance`).

Every function here takes many frames at once (an int64 array of frame ids of
one :class:`analysis.calltree.CallForest`) and walks their ancestor chains one
level per step for all of them together, so the cost is the depth of the call
trees times the number of frames, in numpy, never a Python loop per frame.
"""

from __future__ import annotations

import numpy as np

from .calltree import CallForest


def nested_in(forest: CallForest, frames: np.ndarray, required: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which ``frames`` run inside the ``required`` functions.

    Args:
        forest: the rebuilt call trees.
        frames: frame ids (int array).
        required: function names that must enclose each frame, outermost first,
            in that order, possibly through other frames.

    Returns:
        ``(proven, anywhere)``, bool arrays like ``frames``: ``anywhere`` when the
        required names are a subsequence of the frame's ancestors' functions;
        ``proven`` when that holds using complete ancestor frames only (frames
        closed by their own return, see :mod:`analysis.calltree`).
    """
    frames = np.asarray(frames, dtype=np.int64)
    n = len(frames)
    if not required:
        return np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    req = np.array([forest.code_of(r) for r in required], dtype=np.int64)
    parents, codes, complete = forest.parents, forest.function_codes, forest.complete
    # greedy from the innermost required name outwards: a subsequence exists
    # exactly when the greedy walk consumes every name
    left_any = np.full(n, len(req) - 1, dtype=np.int64)
    left_proven = left_any.copy()
    cur = parents[frames] if n else np.empty(0, dtype=np.int64)
    live = np.flatnonzero(cur >= 0)
    while len(live):
        c = cur[live]
        f = codes[c]
        la, lp = left_any[live], left_proven[live]
        hit_a = (la >= 0) & (f == req[np.maximum(la, 0)])
        hit_p = (lp >= 0) & (f == req[np.maximum(lp, 0)]) & complete[c]
        left_any[live] = la - hit_a
        left_proven[live] = lp - hit_p
        nxt = parents[c]
        cur[live] = nxt
        # proven needs at least the steps of anywhere, so stop once proven is done
        live = live[(nxt >= 0) & (left_proven[live] >= 0)]
    return left_proven < 0, left_any < 0


def nearest_of(forest: CallForest, frames: np.ndarray, function: str) -> np.ndarray:
    """For each frame, the nearest enclosing frame of ``function`` (the caller call), or -1."""
    frames = np.asarray(frames, dtype=np.int64)
    out = np.full(len(frames), -1, dtype=np.int64)
    code = forest.code_of(function)
    if code < 0 or not len(frames):
        return out
    parents, codes = forest.parents, forest.function_codes
    cur = parents[frames]
    live = np.flatnonzero(cur >= 0)
    while len(live):
        c = cur[live]
        found = codes[c] == code
        out[live[found]] = c[found]
        nxt = parents[c]
        cur[live] = nxt
        live = live[~found & (nxt >= 0)]
    return out


def shortest_chain(forest: CallForest, frames: np.ndarray) -> int:
    """The frame with the fewest ancestors (lowest id on a tie): the evidence that reads best."""
    frames = np.asarray(frames, dtype=np.int64)
    return int(frames[np.lexsort((frames, forest.depths[frames]))[0]])


def sibling_order(forest: CallForest, sibling_frames: list[np.ndarray], anchor: str) -> list[tuple[int, int]]:
    """How often each documented sibling ran in document order within each call of its caller.

    Args:
        sibling_frames: per sibling step, in document order, its matched frame ids.
        anchor: the function of the caller call the siblings are compared within.

    Returns:
        per sibling ``(in_order, out_of_order)``: within each call of ``anchor``
        where at least two siblings ran, a sibling is in order when it has a call
        starting after the call chosen for the sibling before it (the earliest
        such; the first sibling's earliest call starts the chain), else out of order.
    """
    starts = forest.frames["start_ns"].to_numpy().astype(np.int64) if len(forest.frames) else np.empty(0, np.int64)
    insts = [nearest_of(forest, f, anchor) for f in sibling_frames]
    every = np.concatenate(insts) if insts else np.empty(0, dtype=np.int64)
    ids = np.unique(every[every >= 0])
    present = [np.unique(np.searchsorted(ids, i[i >= 0])) for i in insts]
    siblings_in = np.zeros(len(ids), dtype=np.int64)
    for p in present:
        siblings_in[p] += 1
    counted = siblings_in >= 2
    big = np.iinfo(np.int64).max
    t = np.full(len(ids), -1, dtype=np.int64)
    out = []
    for frames, inst, p in zip(sibling_frames, insts, present):
        ok = inst >= 0
        ci = np.searchsorted(ids, inst[ok])
        x = starts[np.asarray(frames, dtype=np.int64)[ok]]
        later = x > t[ci]
        best = np.full(len(ids), big, dtype=np.int64)
        np.minimum.at(best, ci[later], x[later])
        p = p[counted[p]]
        has = best[p] < big
        out.append((int(has.sum()), int((~has).sum())))
        t[p[has]] = best[p[has]]
    return out
