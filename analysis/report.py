"""Assemble the path-conformance report: ``report.json``, ``report.md`` and latency PNGs.

``report.json`` layout (stable keys, machine-readable)::

    {
      "kernel": "6.1.0-56-amd64", "mechanism": "kprobe", "where": "lab VM ...",
      "events": 12345, "lost": 0, "orphan_returns": 0, "unterminated": 0,
      "lost_returns": 0, "open_at_end": 0,
      "time_backwards": {"count": 0, "first": null},   # a trace defect when count > 0
      "not_recorded": [],   # documented functions this trace did not probe
      "workloads": [...], "plan": {name: {status, symbol, ...}},
      "paths": [{"name", "source", "spec", "number", "trigger",
                 "summary": {"observed", "checkable", "verdicts": {...}},
                 "steps": [{"number", "function", "verdict", "count", "evidence", ...}]}],
      "latency": [{"function", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns", "mean_ns", "plot"}],
      "mode": "per-event" | "aggregate (counted in BPF maps)",
      "aggregate": null | {"max_depth", "depth_overflow", "unmatched_returns", "map_full", "stale_frames", "paths"},
      "latency_source": "per-packet samples (entry to return)" | "counted in the kernel (log2 buckets)",
      "probes": {name: "fentry" | "kprobe" | "inline-site"}   # per probed function (old traces: kprobe)
    }

In aggregate mode (``analysis/aggregate.py``) the counts are weighted frames;
latency rows come from the kernel's log2 buckets (their ``*_ns`` quantiles are
bucket upper bounds, with ``*_range`` and ``buckets`` beside them) and there
are no per-packet journeys (no skb identity is kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .aggregate import build_aggregate_forest, hist_table, is_aggregate, mean_ns_by_function, mode_label, probe_kind
from .calltree import build_forest
from .conformance import VERDICTS, check_specs, unrecorded_functions
from .latency import bucket_stats, hot_path_functions, latency_stats, packet_samples
from .html_report import write_html
from .journeys import report_blocks
from .packets import assign_packets
from .plots import draw, histogram_jobs, log2_histogram_jobs, path_plot_jobs
from .spec import Spec
from .textsafe import md_code, md_markup, md_text, terminal
from .trace import Trace


def build_report(trace: Trace, specs: list[Spec], out_dir: str | Path | None = None,
                 plot_jobs: list | None = None, release_events: bool = False) -> dict:
    """Analyse ``trace`` against ``specs``; write PNGs into ``out_dir`` when given.

    ``plot_jobs``: a list to append the planned PNGs to (for :func:`analysis.plots.draw`)
    instead of drawing them here; the report names them all the same.
    ``release_events``: empty ``trace.events`` once the call trees are built (they are
    not needed after; for callers that are done with the trace: less peak memory).

    Returns:
        the report as a JSON-serialisable dict (layout in the module docstring).
    """
    aggregate = is_aggregate(trace.meta)
    forest = build_aggregate_forest(trace.meta, trace.events) if aggregate else build_forest(trace.events)
    n_events = int(len(trace.events))
    if release_events:
        trace.events = trace.events.iloc[0:0].copy()  # a slice would keep the columns alive
    plan = trace.meta.get("plan", {}).get("functions", {})
    failed = trace.meta.get("attach_failed", {})
    results = check_specs(specs, forest, plan, failed)
    jobs: list = []
    plots = {}
    if aggregate:  # the kernel's log2 buckets, every probed function with a duration
        slots = sorted((fp["func_id"], n) for n, fp in plan.items() if fp.get("func_id") is not None)
        stats = bucket_stats(hist_table(trace.meta), mean_ns_by_function(trace.meta), [n for _, n in slots])
        if out_dir is not None:
            plots, jobs = log2_histogram_jobs(stats)
    else:
        samples = packet_samples(forest, hot_path_functions(plan))
        stats = latency_stats(samples)
        if out_dir is not None:
            plots, jobs = histogram_jobs(samples, stats)
    packets = assign_packets(forest, plan)
    blocks = report_blocks(specs, forest, plan, packets, failed)
    paths = []
    for spec, path_results in results:
        for pr in path_results:
            d = pr.to_dict()
            d["spec"] = spec.source
            for st in d["steps"]:  # the probe kind of the function carrying the evidence
                st["probe"] = probe_kind(plan.get(st.get("successor") or st.get("function") or ""))
            pj, d["packets"] = blocks[len(paths)]
            if out_dir is not None and d["packets"]["count"]:
                d["packets"]["plots"], more = path_plot_jobs(str(len(paths)), f"{pr.number}. {pr.name[:40]}",
                                                             pj.complete()["latency_ns"].to_numpy(), d["packets"])
                jobs += more
            paths.append(d)
    if plot_jobs is not None:
        plot_jobs.extend(jobs)
    elif jobs:
        draw(jobs, out_dir)
    latency = []
    for row in stats.to_dict("records"):
        row = {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in row.items()}
        row["count"] = int(row["count"])
        row["plot"] = plots.get(row["function"])
        latency.append(row)
    return {
        "kernel": trace.kernel,
        "mechanism": trace.meta.get("mechanism", "kprobe"),
        "where": trace.meta.get("where", ""),
        "events": n_events,
        "lost": int(trace.meta.get("lost", 0)),
        "lost_per_cpu": [int(x) for x in trace.meta.get("lost_per_cpu") or []],
        "orphan_returns": forest.orphan_returns,
        "unterminated": forest.unterminated,
        "lost_returns": forest.lost_returns,
        "open_at_end": forest.open_at_end,
        "time_backwards": {"count": forest.time_backwards, "first": forest.time_backwards_first},
        "not_recorded": unrecorded_functions(specs, plan, failed),
        "workloads": trace.meta.get("workloads", []),
        "attach_failed": failed,
        "specs": [{"source": s.source, "format": s.format, "warnings": s.warnings} for s in specs],
        "plan": plan,
        "fields": trace.meta.get("plan", {}).get("fields", {}),
        "paths": paths,
        "latency": latency,
        "packet_identity": {"mode": packets.mode, "how": packets.describe() if not aggregate else NO_JOURNEYS,
                            "lifetimes": int(len(packets.lifetimes)),
                            "free_events": packets.free_events, "fork_events": packets.fork_events},
        "mode": mode_label(trace.meta),
        "aggregate": getattr(forest, "counters", None),
        "latency_source": "counted in the kernel (log2 buckets)" if aggregate else "per-packet samples (entry to return)",
        "probes": {n: k for n, k in ((n, probe_kind(fp)) for n, fp in plan.items()) if k},
        "verdict_vocabulary": list(VERDICTS),
        # issue 10: inlined functions probed at their inline sites (analysis/instants.py)
        "inline_sites": inline_site_rows(forest, plan),
        "inline": trace.meta.get("inline", {"checked": False, "note": ""}),
    }


def inline_site_rows(forest, plan: dict[str, dict]) -> list[dict]:
    """Per inlined function: its probed sites and how often each fired. An inline site has
    no return, so no duration: ``latency`` is the fixed text ``"inline site: no return"``."""
    fr = forest.frames
    sites = (fr["mechanism"].astype(object) == "inline-site").to_numpy() if "site_slot" in fr else None
    if sites is None:
        counts = pd.Series([], dtype="int64")
    elif forest.weights is None:
        counts = fr.loc[sites, "site_slot"].value_counts()
    else:  # counting mode: a frame stands for its calls
        counts = pd.Series(forest.weights[sites]).groupby(fr["site_slot"].to_numpy()[sites]).sum()
    out = []
    for name, fp in plan.items():
        if fp.get("status") != "inlined":
            continue
        sites = [{"probe": x.get("probe"), "source": f"{x.get('file') or '?'}:{x.get('line')}",
                  "count": int(counts.get(x["func_id"], 0)) if x.get("func_id") is not None else None}
                 for x in fp.get("inline_sites", [])]
        out.append({"function": name, "count": sum(x["count"] or 0 for x in sites), "sites": sites,
                    "latency": "inline site: no return"})
    return out


#: ``packet_identity.how`` of a counting-mode report.
NO_JOURNEYS = ("none in aggregate mode: the kernel counts calls per path and keeps no skb identity, "
               "so there are no per-packet journeys")


def summary_lines(report: dict) -> list[str]:
    """One line per path: ``observed/checkable  name  (source)``."""
    out = []
    for p in report["paths"]:
        s = p["summary"]
        out.append(terminal(f"{s['observed']:>3}/{s['checkable']:<3} {p['name'][:60]:<60} {p['source']}"))
    return out


# document and kernel text is escaped wherever it is rendered (analysis/textsafe.py)
_md_escape = md_text
_md_code = md_code


def render_markdown(report: dict) -> str:
    """The report as Markdown for people."""
    lines = [
        "# callpath path-conformance report",
        "",
        f"- kernel: {_md_code(report['kernel'])} ({_md_escape(report['where'] or 'running kernel')}), "
        f"probes: {_md_escape(report['mechanism'])}",
        f"- events: {report['events']}, lost (ring buffer full): {report['lost']}"
        + (" (per CPU: " + ", ".join(f"CPU {i}: {n}" for i, n in enumerate(report["lost_per_cpu"]) if n) + ")"
           if report["lost"] and any(report.get("lost_per_cpu") or []) else "") + ", "
        f"returns without entry: {report['orphan_returns']}, calls without return: {report['unterminated']}"
        + (f" ({report.get('lost_returns', 0)} closed by an enclosing return, {report.get('open_at_end', 0)} still open "
           "at trace end; they prove no nesting)" if report["unterminated"] else ""),
    ]
    lines.append(f"- mode: {_md_escape(report.get('mode', 'per-event'))}" + _aggregate_counters(report.get("aggregate")))
    back = report.get("time_backwards") or {}
    if back.get("count"):
        f = back["first"]
        lines.append(f"- **trace defect**: {back['count']} timestamps go backwards within a thread (first: "
                     f"{_md_code(f['function'])} seq {f['seq']} on thread {f['thread']}, {f['ts_ns']} ns after "
                     f"{f['previous_ts_ns']} ns); their durations are left out")
    if report.get("not_recorded"):
        lines.append("- documented functions not recorded in this trace (verdict `not-recorded`): "
                     + ", ".join(_md_code(n) for n in report["not_recorded"]))
    for w in report["workloads"]:
        sent = ", ".join(f"{k}: {v}" for k, v in (w.get("sent") or {}).items())
        lines.append(f"- workload {_md_code(w.get('name'))}: {_md_escape(w.get('description', ''))}"
                     + (f" (sent {_md_escape(sent)})" if sent else ""))
    if report["attach_failed"]:
        lines.append("- probes that failed to attach: "
                     + ", ".join(f"{_md_code(k)} ({_md_escape(v)})" for k, v in report["attach_failed"].items()))
    lines += ["", "## Summary", "", "| path | source | observed / checkable | out of order | via successor | not exercised "
              "| not recorded | absent | not traceable | not a call |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in report["paths"]:
        v = p["summary"]["verdicts"]
        lines.append(
            f"| {_md_escape(p['name'])} | {_md_code(p['source'])} | {p['summary']['observed']} / {p['summary']['checkable']} | "
            f"{v['observed-out-of-order']} | {v.get('successor-observed', 0)} | {v['not-exercised']} | "
            f"{v.get('not-recorded', 0)} | {v['absent']} | {v['not-traceable']} | {v['not-a-call']} |"
        )
    for p in report["paths"]:
        lines += ["", f"## {_md_escape(p['number'])}. {_md_escape(p['name'])}", "", f"Source: {_md_code(p['source'])}"
                  + (f"; triggered by {_md_code(p['trigger'])}" if p.get("trigger") else ""), "",
                  "| step | documented | verdict | count | evidence / detail |", "|---|---|---|---|---|"]
        for s in p["steps"]:
            ev = " > ".join(s["evidence"]) if s["evidence"] else ""
            extra = []
            if s.get("symbol") and s["symbol"] not in (s["function"], s.get("successor")):
                extra.append(f"probed as {_md_code(s['symbol'])}")
            if s.get("returns") and "observed" in s["verdict"]:
                extra.append("returns " + ", ".join(f"{_md_escape(k)}×{v}" for k, v in list(s["returns"].items())[:4]))
            if s.get("mechanism") and s["mechanism"] not in ("kprobe", "fentry"):
                extra.append(f"evidence from {_md_escape(s['mechanism'])}")
            if s.get("detail_returns"):
                extra.append(md_markup(s["detail_returns"]))
            if s.get("mean_ns"):
                extra.append(f"mean {s['mean_ns']:,.0f} ns")
            detail = "; ".join(x for x in [_md_code(ev) if ev else "", md_markup(s["detail"] or ""), *extra] if x)
            label = " ".join(x for x in [s.get("branch") or "", s.get("condition") or ""] if x and x not in s["text"])
            lines.append(f"| {_md_escape(s['number'])} | {_md_code(s['text'])}{(' — ' + _md_escape(label)) if label else ''} | "
                         f"**{_md_escape(s['verdict'])}** | {s['count']} | {detail} |")
    lines += _packets_markdown(report)
    counted = report.get("latency_source", "").startswith("counted")
    lines += _bucket_latency_markdown(report) if counted else ["", "## Per-packet latency (entry to return)", ""]
    if counted:
        pass
    elif report["latency"]:
        lines += ["| function | calls | p50 ns | p90 ns | p99 ns | max ns | histogram |", "|---|---|---|---|---|---|---|"]
        for r in report["latency"]:
            plot = f"![{_md_escape(r['function'])}]({r['plot']})" if r.get("plot") else ""
            lines.append(f"| {_md_code(r['function'])} | {r['count']} | {r['p50_ns']:,.0f} | {r['p90_ns']:,.0f} | "
                         f"{r['p99_ns']:,.0f} | {r['max_ns']:,.0f} | {plot} |")
    else:
        lines.append("No packet-handling function completed a call in this trace.")
    for r in report.get("inline_sites", []):
        seen = ", ".join(f"{_md_escape(x['probe'])} {x['count']}×" for x in r["sites"] if x["count"] is not None)
        lines.append(f"- {_md_code(r['function'])}: inline site: no return (entry only, no duration); "
                     f"{r['count']} hits ({seen or 'no site probed'})")
    if report.get("inline", {}).get("note"):
        lines += ["", f"Inlining: {_md_escape(report['inline']['note'])}"]
    elif not report.get("inline", {}).get("checked"):
        lines += ["", "Inlining could not be checked (no DWARF looked at): absent functions may be inlined or "
                  "removed; install the kernel's debug info (`tools/fetch-debuginfo.sh RELEASE`) or pass --debuginfo DIR."]
    lines += ["", "## Probe plan", "", "| function | status | probe | symbol | module | skb arg | reason |",
              "|---|---|---|---|---|---|---|"]
    probes = report.get("probes") or {}
    for name, fp in report["plan"].items():
        lines.append(f"| {_md_code(name)} | {_md_escape(fp['status'])} | {_md_escape(probes.get(name, ''))} | "
                     f"{_md_escape(fp.get('symbol') or '')} | "
                     f"{_md_escape(fp.get('module') or '')} | {_md_escape(fp.get('skb_arg') or '')} | "
                     f"{_md_escape(fp.get('reason', ''))} |")
    lines += ["", "Verdicts: " + ", ".join(f"`{v}`" for v in VERDICTS) + ".", ""]
    return "\n".join(lines)


def _aggregate_counters(counters: dict | None) -> str:
    """The kernel's counting-mode counters as a clause for the mode line ("" per-event)."""
    if not counters:
        return ""
    return (f": {counters.get('paths', 0)} distinct paths of probed functions; stack depth kept "
            f"{counters.get('max_depth', 0)}, entries beyond it {counters.get('depth_overflow', 0)}, returns without "
            f"their entry on the stack {counters.get('unmatched_returns', 0)}, frames found returned unseen "
            f"{counters.get('stale_frames', 0)}, counts lost to full maps {counters.get('map_full', 0)}")


def _bucket_latency_markdown(report: dict) -> list[str]:
    """The counting-mode latency section: per function, the kernel's log2 buckets."""
    lines = ["", "## Latency per call (entry to return), counted in the kernel (log2 buckets)", "",
             "Quantiles are the log2 buckets holding them (durations known within a factor of 2); the mean is exact. "
             "No per-packet journeys: this mode keeps no skb identity.", ""]
    if not report["latency"]:
        return lines + ["No probed function completed a call in this trace."]
    lines += ["| function | calls | p50 | p90 | p99 | max | mean ns | histogram |", "|---|---|---|---|---|---|---|---|"]
    for r in report["latency"]:
        plot = f"![{_md_escape(r['function'])}]({r['plot']})" if r.get("plot") else ""
        mean = f"{r['mean_ns']:,.0f}" if r.get("mean_ns") is not None else ""
        lines.append(f"| {_md_code(r['function'])} | {r['count']} | {r['p50_range']} | {r['p90_range']} | "
                     f"{r['p99_range']} | {r['max_range']} | {mean} | {plot} |")
    return lines


def _packets_markdown(report: dict) -> list[str]:
    """The per-path packet journey tables (``packets`` blocks)."""
    pi = report.get("packet_identity") or {}
    lines = ["", "## Packets along each path (first documented step to last)", "", f"Identity: {_md_escape(pi.get('how', ''))}.", "",
             "| path | followed end to end | partial | entry only | p50 ns | p90 ns | p99 ns | max ns | went on to |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:,.0f}"  # noqa: E731
    names = [f"{p['number']}. {p['name'][:40]}" for p in report["paths"]]
    for p, name in zip(report["paths"], names):
        b = p.get("packets") or {}
        if not (b.get("count") or b.get("partial")):
            continue
        nxt = ", ".join(f"{_md_escape(names[h['to']])} ({h['count']}, p50 {h['p50_ns']:,.0f} ns)" for h in b.get("next", []))
        lines.append(f"| {_md_escape(name)} | {b['count']} | {b['partial']} | {b['entry_only']} | {fmt(b['p50_ns'])} | "
                     f"{fmt(b['p90_ns'])} | {fmt(b['p99_ns'])} | {fmt(b['max_ns'])} | {nxt} |")
    for p, name in zip(report["paths"], names):
        b = p.get("packets") or {}
        if not b.get("hops") and not b.get("partial_reasons"):
            continue
        lines += ["", f"### {_md_escape(name)}: hops", ""]
        for why, n in (b.get("partial_reasons") or {}).items():
            lines.append(f"- partial: {n} packets, {_md_escape(why)}")
        if b.get("hops"):
            lines += ["", "| from | to | count | p50 ns | p99 ns |", "|---|---|---|---|---|"]
            lines += [f"| {_md_code(h['from'])} | {_md_code(h['to'])} | {h['count']} | {h['p50_ns']:,.0f} | {h['p99_ns']:,.0f} |"
                      for h in b["hops"]]
        for kind, name_ in (b.get("plots") or {}).items():
            lines.append(f"\n![{kind}]({name_})")
    return lines


def write_report(trace: Trace, specs: list[Spec], out_dir: str | Path, plot_jobs: list | None = None,
                 release_events: bool = False) -> dict:
    """Write ``report.json`` and ``report.md``, then the PNGs and ``report.html`` (which embeds
    them) into ``out_dir``; return the report dict.

    ``plot_jobs``: a list to leave the PNGs in instead (then the caller draws them with
    :func:`analysis.plots.draw` and writes ``report.html`` with :func:`finish_report`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [] if plot_jobs is None else plot_jobs
    report = build_report(trace, specs, out_dir, plot_jobs=jobs, release_events=release_events)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    if plot_jobs is None:
        finish_report(report, out_dir, jobs)
    return report


def finish_report(report: dict, out_dir: str | Path, plot_jobs: list, workers: int = 1) -> None:
    """Draw the report's PNGs into ``out_dir`` (``workers`` processes) and write ``report.html``."""
    draw(plot_jobs, out_dir, workers)
    write_html(report, out_dir)
