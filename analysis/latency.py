"""Per-packet latency of hot-path functions, from entry to return, with pandas.

A *hot-path* function is a probed function that takes a ``struct sk_buff *``
(from BTF, recorded in the probe plan as ``skb_arg``) carrying a packet, not a
netlink message (rtnetlink handlers such as ``rtnl_newlink(skb, nlh, extack)``
take a ``struct nlmsghdr *`` too, flagged ``netlink`` in the plan): each of its
calls handles one packet, so each complete frame with a non-zero skb is one sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calltree import CallForest

STAT_COLUMNS = ["function", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns", "mean_ns"]


def hot_path_functions(plan: dict[str, dict]) -> list[str]:
    """Probed functions that take an skb, in plan slot order."""
    hot = [(fp["func_id"], name) for name, fp in plan.items()
           if fp.get("func_id") is not None and fp.get("skb_arg") and not fp.get("netlink")
           and not fp.get("tracking")]
    return [name for _, name in sorted(hot)]


def packet_samples(forest: CallForest, functions: list[str]) -> pd.DataFrame:
    """One row per packet-handling call: columns ``function``, ``duration_ns``, ``skb``, ``ifindex``, ``tid``.

    Only complete frames (entry and return seen) with a non-zero skb and a
    known, non-negative duration count: a frame whose return is stamped before
    its entry (a trace defect, counted by :func:`analysis.calltree.build_forest`)
    has no duration and is left out.
    """
    fr = forest.frames
    if not len(fr):
        return pd.DataFrame(columns=["function", "duration_ns", "skb", "ifindex", "tid"])
    dur = pd.to_numeric(fr["duration_ns"], errors="coerce")
    sel = fr[fr["function"].isin(functions) & fr["complete"].astype(bool) & (fr["skb"] != 0) & (dur >= 0)]
    return sel[["function", "duration_ns", "skb", "ifindex", "tid"]].reset_index(drop=True)


def latency_stats(samples: pd.DataFrame) -> pd.DataFrame:
    """count, p50, p90, p99, max, mean (ns) per function; columns :data:`STAT_COLUMNS`.

    Rows follow the first appearance of each function in ``samples``.
    """
    if not len(samples):
        return pd.DataFrame(columns=STAT_COLUMNS)
    g = samples.groupby("function", sort=False)["duration_ns"]
    q = g.quantile([0.5, 0.9, 0.99]).unstack()
    out = pd.DataFrame(
        {
            "function": q.index,
            "count": g.count().reindex(q.index).to_numpy(),
            "p50_ns": q[0.5].to_numpy(),
            "p90_ns": q[0.9].to_numpy(),
            "p99_ns": q[0.99].to_numpy(),
            "max_ns": g.max().reindex(q.index).to_numpy(),
            "mean_ns": g.mean().reindex(q.index).to_numpy(),
        }
    )
    order = list(dict.fromkeys(samples["function"]))
    return out.set_index("function").loc[order].reset_index()[STAT_COLUMNS]


def _range(lo: int, hi: int) -> str:
    """``[lo, hi)`` of a log2 bucket in ns, us or ms: ``"[1.0 us, 2.0 us)"``."""
    def f(v):
        return f"{v} ns" if v < 2**10 else f"{v / 1e3:.1f} us" if v < 2**20 else f"{v / 1e6:.1f} ms"
    return f"[{f(lo)}, {f(hi)})"


def bucket_stats(hist: pd.DataFrame, means: dict[str, float], functions: list[str] | None = None) -> pd.DataFrame:
    """Latency per function from the kernel's log2 buckets (counting mode).

    Args:
        hist: :func:`analysis.aggregate.hist_table` rows (``function``, ``bucket``,
            ``count``, ``lo_ns``, ``hi_ns``).
        means: function -> exact mean duration (ns), from the paths' ``sum_ns / calls``.
        functions: order of the rows (plan slot order); others follow by name.

    Returns:
        columns :data:`STAT_COLUMNS` plus ``p50_range``, ``p90_range``, ``p99_range``,
        ``max_range`` (the bucket holding the quantile, ``"[1.0 us, 2.0 us)"``) and
        ``buckets`` (list of ``{"bucket", "lo_ns", "hi_ns", "count"}``). The ``*_ns``
        quantiles are the upper bounds of their buckets (durations are known to
        within a factor of 2), ``mean_ns`` is exact.
    """
    cols = STAT_COLUMNS + ["p50_range", "p90_range", "p99_range", "max_range", "buckets"]
    if not len(hist):
        return pd.DataFrame(columns=cols)
    order = list(dict.fromkeys([f for f in (functions or []) if f in set(hist["function"])]
                               + sorted(set(hist["function"]))))
    rows = []
    for fn, g in hist.groupby("function", sort=False):
        cum = g["count"].cumsum().to_numpy()
        total = int(cum[-1])
        row = {"function": fn, "count": total, "mean_ns": means.get(fn)}
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            i = int(np.searchsorted(cum, q * total, side="left"))
            lo, hi = int(g["lo_ns"].iloc[i]), int(g["hi_ns"].iloc[i])
            row[f"{key}_ns"], row[f"{key}_range"] = float(hi), _range(lo, hi)
        row["buckets"] = g[["bucket", "lo_ns", "hi_ns", "count"]].astype(int).to_dict("records")
        rows.append(row)
    out = pd.DataFrame(rows).set_index("function").loc[order].reset_index()
    return out[cols]
