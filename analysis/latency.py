"""Per-packet latency of hot-path functions, from entry to return, with pandas.

A *hot-path* function is a probed function that takes a ``struct sk_buff *``
(from BTF, recorded in the probe plan as ``skb_arg``) carrying a packet, not a
netlink message (rtnetlink handlers such as ``rtnl_newlink(skb, nlh, extack)``
take a ``struct nlmsghdr *`` too, flagged ``netlink`` in the plan): each of its
calls handles one packet, so each complete frame with a non-zero skb is one sample.
"""

from __future__ import annotations

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
