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


def plot_path_latency(ax, latency_ns: np.ndarray, title: str, stats: dict | None = None):
    """Histogram of whole-path latency (first documented step to last, ns) on ``ax``.

    Log-spaced bins and a log x axis when max/min exceeds 20 (a wide spread),
    linear otherwise. ``stats``: the path's ``packets`` block, to mark p50/p99.
    Returns the Axes' figure.
    """
    d = np.asarray(latency_ns, dtype=float)
    d = d[d > 0]
    if len(d):
        lo, hi = max(d.min(), 1.0), max(d.max(), 2.0)
        wide = hi / lo > 20
        bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 40) if wide else 30
        ax.hist(d, bins=bins, color="#55a868", edgecolor="white", linewidth=0.3)
        if wide:
            ax.set_xscale("log")
    for key, style in (("p50_ns", "--"), ("p99_ns", ":")):
        v = (stats or {}).get(key)
        if v:
            ax.axvline(v, color="#c44e52", linestyle=style, label=f"{key[:3]} {v:,.0f} ns")
    if stats and (stats.get("p50_ns") or stats.get("p99_ns")):
        ax.legend(fontsize=8)
    ax.set_title(f"{title}: per-packet path latency (n={len(d)})", fontsize=10)
    ax.set_xlabel("first documented step to last (ns)")
    ax.set_ylabel("packets")
    return ax.figure


def plot_hop_breakdown(ax, hops: list[dict], title: str):
    """Horizontal bars per hop (from -> to): p50 bar with a p99 whisker, ns, log x
    when the hops differ by more than 20x. ``hops``: the ``packets.hops`` rows.
    Returns the Axes' figure."""
    labels = [f"{h['from']} → {h['to']} (n={h['count']})" for h in hops]
    p50 = np.array([h["p50_ns"] for h in hops], dtype=float)
    p99 = np.array([h["p99_ns"] for h in hops], dtype=float)
    y = np.arange(len(hops))[::-1]
    if len(hops):
        ax.barh(y, p50, color="#4878a8", label="p50")
        ax.errorbar(p50, y, xerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none", ecolor="#c44e52",
                    capsize=3, label="to p99")
        ax.set_yticks(y, labels, fontsize=7)
        pos = np.concatenate([p50[p50 > 0], p99[p99 > 0]])
        if len(pos) and pos.max() / max(pos.min(), 1.0) > 20:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_title(f"{title}: hop latency (entry to entry)", fontsize=10)
    ax.set_xlabel("ns")
    return ax.figure


def write_path_plots(key: str, title: str, latency_ns: np.ndarray, stats: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``path-<key>-latency.png`` and ``path-<key>-hops.png``; return
    ``{"latency": name, "hops": name}`` (names relative to ``out_dir``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    plot_path_latency(fig.add_subplot(), latency_ns, title, stats)
    names["latency"] = f"path-{safe_name(key)}-latency.png"
    fig.savefig(out_dir / names["latency"])
    if stats.get("hops"):
        fig = Figure(figsize=(7.2, 1.2 + 0.35 * len(stats["hops"])), dpi=100, layout="constrained")
        plot_hop_breakdown(fig.add_subplot(), stats["hops"], title)
        names["hops"] = f"path-{safe_name(key)}-hops.png"
        fig.savefig(out_dir / names["hops"])
    return names
