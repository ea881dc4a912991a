"""Latency histograms with matplotlib (Agg backend, no global pyplot state).

Plot functions take precomputed samples and an ``Axes``. Writing is two steps
so a report is usable before its pictures exist: :func:`histogram_jobs` and
:func:`path_plot_jobs` plan the PNGs (deterministic file names, the data each
needs), :func:`draw` draws them later, reusing one figure with fixed margins
(a constrained layout per figure cost more than the drawing), in worker
processes when there are many. :func:`write_histograms` and
:func:`write_path_plots` do both at once.
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


def plot_log2_histogram(ax, buckets: list[dict], function: str):
    """Bars of one function's kernel-counted log2 latency buckets on ``ax`` (counting mode).

    Args:
        buckets: ``[{"bucket", "lo_ns", "hi_ns", "count"}]`` (``analysis.latency.bucket_stats``),
            bucket b holding durations in [2^b, 2^(b+1)) ns.
    Returns:
        the Axes' figure.
    """
    lo = np.array([b["lo_ns"] for b in buckets], dtype=float)
    hi = np.array([b["hi_ns"] for b in buckets], dtype=float)
    counts = np.array([b["count"] for b in buckets], dtype=float)
    if len(counts):
        left = np.maximum(lo, 1.0)
        ax.bar(left, counts, width=hi - left, align="edge", color="#4878a8", edgecolor="white", linewidth=0.3)
        ax.set_xscale("log", base=2)
    ax.set_title(f"{function}: latency counted in the kernel (log2 buckets, n={int(counts.sum())})", fontsize=10)
    ax.set_xlabel("entry to return (ns)")
    ax.set_ylabel("calls")
    return ax.figure


def log2_histogram_jobs(stats: pd.DataFrame) -> tuple[dict[str, str], list[tuple]]:
    """Plan ``latency-<function>.png`` from ``analysis.latency.bucket_stats`` rows without drawing.

    Returns ``(function -> file name, jobs)``; :func:`draw` draws the jobs."""
    names, jobs = {}, []
    for row in stats.to_dict("records") if len(stats) else []:
        name = f"latency-{safe_name(row['function'])}.png"
        jobs.append(("log2", name, (list(row["buckets"]), row["function"])))
        names[row["function"]] = name
    return names, jobs


def safe_name(function: str) -> str:
    """A file-name-safe form of a function name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", function)


#: Figure sizes (inches) and fixed margins: a layout engine per figure costs more than the drawing.
_HIST_SIZE = (6.4, 3.6)
_MARGINS = {"left": 0.1, "right": 0.97, "bottom": 0.15, "top": 0.9}


def histogram_jobs(samples: pd.DataFrame, stats: pd.DataFrame) -> tuple[dict[str, str], list[tuple]]:
    """Plan ``latency-<function>.png`` for each function in ``stats`` without drawing.

    Returns:
        ``(function -> file name, jobs)``; :func:`draw` draws the jobs.
    """
    names, jobs = {}, []
    if not len(stats):
        return names, jobs
    fn_col = samples["function"].astype(object).to_numpy()
    dur = samples["duration_ns"].to_numpy(dtype=float)
    order = np.argsort(fn_col.astype(str), kind="stable")
    keys, first = np.unique(fn_col[order].astype(str), return_index=True)
    bounds = dict(zip(keys, zip(first, list(first[1:]) + [len(order)])))
    for row in stats.to_dict("records"):
        fn = row["function"]
        lo, hi = bounds.get(str(fn), (0, 0))
        name = f"latency-{safe_name(fn)}.png"
        jobs.append(("latency", name, (dur[order[lo:hi]], fn, row)))
        names[fn] = name
    return names, jobs


def write_histograms(samples: pd.DataFrame, stats: pd.DataFrame, out_dir: str | Path) -> dict[str, str]:
    """Write ``latency-<function>.png`` for each function in ``stats``.

    Returns:
        function -> file name (relative to ``out_dir``).
    """
    names, jobs = histogram_jobs(samples, stats)
    draw(jobs, out_dir)
    return names


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


def path_plot_jobs(key: str, title: str, latency_ns: np.ndarray, stats: dict) -> tuple[dict[str, str], list[tuple]]:
    """Plan ``path-<key>-latency.png`` and ``path-<key>-hops.png`` (when there are hops) without drawing.

    Returns ``({"latency": name, "hops": name}, jobs)``; :func:`draw` draws the jobs."""
    names = {"latency": f"path-{safe_name(key)}-latency.png"}
    jobs = [("path-latency", names["latency"], (np.asarray(latency_ns, dtype=float), title, dict(stats)))]
    if stats.get("hops"):
        names["hops"] = f"path-{safe_name(key)}-hops.png"
        jobs.append(("hops", names["hops"], (list(stats["hops"]), title)))
    return names, jobs


def write_path_plots(key: str, title: str, latency_ns: np.ndarray, stats: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``path-<key>-latency.png`` and ``path-<key>-hops.png``; return
    ``{"latency": name, "hops": name}`` (names relative to ``out_dir``)."""
    names, jobs = path_plot_jobs(key, title, latency_ns, stats)
    draw(jobs, out_dir)
    return names


def _draw_here(jobs: list[tuple], out_dir: str) -> int:
    """Draw ``jobs`` in this process, one reused figure for the fixed-size kinds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=_HIST_SIZE, dpi=100)
    for kind, name, args in jobs:
        if kind == "hops":  # height follows the hops, long labels: a layout engine is worth it here
            hfig = Figure(figsize=(7.2, 1.2 + 0.35 * len(args[0])), dpi=100, layout="constrained")
            plot_hop_breakdown(hfig.add_subplot(), *args)
            hfig.savefig(out / name)
            continue
        fig.clear()
        fig.subplots_adjust(**_MARGINS)
        ax = fig.add_subplot()
        {"latency": plot_latency_histogram, "log2": plot_log2_histogram}.get(kind, plot_path_latency)(ax, *args)
        fig.savefig(out / name)
    return len(jobs)


def draw(jobs: list[tuple], out_dir: str | Path, workers: int = 1) -> int:
    """Draw planned plots (:func:`histogram_jobs`, :func:`path_plot_jobs`) into ``out_dir``.

    Args:
        workers: at most this many processes draw (jobs split evenly; 1 draws
            here). A PNG takes about 0.12 s whatever the sample count and a
            worker about 2 s to start, so workers are used only for 60+ plots
            each; on this 2-core machine 130 plots took 15.7 s in one process
            and 19.2 s in two workers, so callers default to one.

    Returns:
        the number of PNGs written.
    """
    # a worker starts in about 2 s (imports), the time of ~20 plots: only worth it for many
    workers = max(1, min(workers, len(jobs) // 60))
    if workers == 1:
        return _draw_here(jobs, str(out_dir))
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    chunks = [jobs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(pool.map(_draw_here, chunks, [str(out_dir)] * workers))
