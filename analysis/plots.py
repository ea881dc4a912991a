"""Latency histograms with matplotlib (Agg backend, no global pyplot state).

Plot functions take precomputed samples and an ``Axes``; :func:`write_histograms`
lays out one PNG per function with deterministic file names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_latency_histogram(ax, durations_ns: np.ndarray, function: str, stats: dict | None = None):
    """Histogram of one function's per-packet latency on ``ax`` (log-spaced bins, ns).

    Args:
        ax: a matplotlib Axes.
        durations_ns: 1-D array of durations in ns (> 0).
        function: the function name, for the title.
        stats: optional row of ``latency_stats`` to mark p50/p99.
    Returns:
        the Axes' figure.
    """
    d = np.asarray(durations_ns, dtype=float)
    d = d[d > 0]
    if len(d):
        lo, hi = max(d.min(), 1.0), max(d.max(), 2.0)
        bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 40) if hi > lo * 1.05 else 10
        ax.hist(d, bins=bins, color="#4878a8", edgecolor="white", linewidth=0.3)
        if hi > lo * 1.05:
            ax.set_xscale("log")
    if stats:
        for key, style in (("p50_ns", "--"), ("p99_ns", ":")):
            if stats.get(key) is not None and not pd.isna(stats[key]):
                ax.axvline(stats[key], color="#c44e52", linestyle=style, label=f"{key[:3]} {stats[key]:,.0f} ns")
        ax.legend(fontsize=8)
    ax.set_title(f"{function}: per-packet latency (n={len(d)})", fontsize=10)
    ax.set_xlabel("entry to return (ns)")
    ax.set_ylabel("calls")
    return ax.figure


def safe_name(function: str) -> str:
    """A file-name-safe form of a function name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", function)


def write_histograms(samples: pd.DataFrame, stats: pd.DataFrame, out_dir: str | Path) -> dict[str, str]:
    """Write ``latency-<function>.png`` for each function in ``stats``.

    Returns:
        function -> file name (relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for row in stats.to_dict("records"):
        fn = row["function"]
        fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        plot_latency_histogram(ax, samples.loc[samples["function"] == fn, "duration_ns"].to_numpy(), fn, row)
        name = f"latency-{safe_name(fn)}.png"
        fig.savefig(out_dir / name)
        written[fn] = name
    return written
