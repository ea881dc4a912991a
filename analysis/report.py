"""Assemble the path-conformance report: ``report.json``, ``report.md`` and latency PNGs.

``report.json`` layout (stable keys, machine-readable)::

    {
      "kernel": "6.1.0-56-amd64", "mechanism": "kprobe", "where": "lab VM ...",
      "events": 12345, "lost": 0, "orphan_returns": 0, "unterminated": 0,
      "workloads": [...], "plan": {name: {status, symbol, ...}},
      "paths": [{"name", "source", "spec", "number", "trigger",
                 "summary": {"observed", "checkable", "verdicts": {...}},
                 "steps": [{"number", "function", "verdict", "count", "evidence", ...}]}],
      "latency": [{"function", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns", "mean_ns", "plot"}]
    }
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .calltree import build_forest
from .conformance import VERDICTS, PathResult, check_specs
from .latency import hot_path_functions, latency_stats, packet_samples
from .plots import write_histograms
from .spec import Spec
from .trace import Trace


def build_report(trace: Trace, specs: list[Spec], out_dir: str | Path | None = None) -> dict:
    """Analyse ``trace`` against ``specs``; write PNGs into ``out_dir`` when given.

    Returns:
        the report as a JSON-serialisable dict (layout in the module docstring).
    """
    forest = build_forest(trace.events)
    plan = trace.meta.get("plan", {}).get("functions", {})
    failed = trace.meta.get("attach_failed", {})
    results = check_specs(specs, forest, plan, failed)
    samples = packet_samples(forest, hot_path_functions(plan))
    stats = latency_stats(samples)
    plots = write_histograms(samples, stats, out_dir) if out_dir is not None and len(stats) else {}
    paths = []
    for spec, path_results in results:
        for pr in path_results:
            d = pr.to_dict()
            d["spec"] = spec.source
            paths.append(d)
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
        "events": int(len(trace.events)),
        "lost": int(trace.meta.get("lost", 0)),
        "orphan_returns": forest.orphan_returns,
        "unterminated": forest.unterminated,
        "workloads": trace.meta.get("workloads", []),
        "attach_failed": failed,
        "specs": [{"source": s.source, "format": s.format, "warnings": s.warnings} for s in specs],
        "plan": plan,
        "paths": paths,
        "latency": latency,
        "verdict_vocabulary": list(VERDICTS),
    }


def summary_lines(report: dict) -> list[str]:
    """One line per path: ``observed/checkable  name  (source)``."""
    out = []
    for p in report["paths"]:
        s = p["summary"]
        out.append(f"{s['observed']:>3}/{s['checkable']:<3} {p['name'][:60]:<60} {p['source']}")
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    """Inline code that survives backticks inside the text (prose documents have them)."""
    text = _md_escape(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_markdown(report: dict) -> str:
    """The report as Markdown for people."""
    lines = [
        "# callpath path-conformance report",
        "",
        f"- kernel: `{report['kernel']}` ({report['where'] or 'running kernel'}), probes: {report['mechanism']}",
        f"- events: {report['events']}, lost (ring buffer full): {report['lost']}, "
        f"returns without entry: {report['orphan_returns']}, calls without return: {report['unterminated']}",
    ]
    for w in report["workloads"]:
        sent = ", ".join(f"{k}: {v}" for k, v in (w.get("sent") or {}).items())
        lines.append(f"- workload `{w.get('name')}`: {w.get('description', '')}" + (f" (sent {sent})" if sent else ""))
    if report["attach_failed"]:
        lines.append("- probes that failed to attach: " + ", ".join(f"`{k}` ({v})" for k, v in report["attach_failed"].items()))
    lines += ["", "## Summary", "", "| path | source | observed / checkable | out of order | not exercised | absent | not traceable | not a call |",
              "|---|---|---|---|---|---|---|---|"]
    for p in report["paths"]:
        v = p["summary"]["verdicts"]
        lines.append(
            f"| {_md_escape(p['name'])} | `{p['source']}` | {p['summary']['observed']} / {p['summary']['checkable']} | "
            f"{v['observed-out-of-order']} | {v['not-exercised']} | {v['absent']} | {v['not-traceable']} | {v['not-a-call']} |"
        )
    for p in report["paths"]:
        lines += ["", f"## {p['number']}. {_md_escape(p['name'])}", "", f"Source: `{p['source']}`"
                  + (f"; triggered by `{p['trigger']}`" if p.get("trigger") else ""), "",
                  "| step | documented | verdict | count | evidence / detail |", "|---|---|---|---|---|"]
        for s in p["steps"]:
            ev = " > ".join(s["evidence"]) if s["evidence"] else ""
            extra = []
            if s.get("symbol") and s["symbol"] != s["function"]:
                extra.append(f"probed as `{s['symbol']}`")
            if s.get("returns") and s["verdict"].startswith("observed"):
                extra.append("returns " + ", ".join(f"{k}×{v}" for k, v in list(s["returns"].items())[:4]))
            if s.get("mechanism") and s["mechanism"] != "kprobe":
                extra.append(f"evidence from {s['mechanism']}")
            if s.get("detail_returns"):
                extra.append(s["detail_returns"])
            if s.get("mean_ns"):
                extra.append(f"mean {s['mean_ns']:,.0f} ns")
            detail = "; ".join(x for x in [f"`{ev}`" if ev else "", s["detail"], *extra] if x)
            label = " ".join(x for x in [s.get("branch") or "", s.get("condition") or ""] if x and x not in s["text"])
            lines.append(f"| {s['number']} | {_md_code(s['text'])}{(' — ' + _md_escape(label)) if label else ''} | "
                         f"**{s['verdict']}** | {s['count']} | {_md_escape(detail)} |")
    lines += ["", "## Per-packet latency (entry to return)", ""]
    if report["latency"]:
        lines += ["| function | calls | p50 ns | p90 ns | p99 ns | max ns | histogram |", "|---|---|---|---|---|---|---|"]
        for r in report["latency"]:
            plot = f"![{r['function']}]({r['plot']})" if r.get("plot") else ""
            lines.append(f"| `{r['function']}` | {r['count']} | {r['p50_ns']:,.0f} | {r['p90_ns']:,.0f} | "
                         f"{r['p99_ns']:,.0f} | {r['max_ns']:,.0f} | {plot} |")
    else:
        lines.append("No packet-handling function completed a call in this trace.")
    lines += ["", "## Probe plan", "", "| function | status | symbol | module | skb arg | reason |", "|---|---|---|---|---|---|"]
    for name, fp in report["plan"].items():
        lines.append(f"| `{name}` | {fp['status']} | {fp.get('symbol') or ''} | {fp.get('module') or ''} | "
                     f"{fp.get('skb_arg') or ''} | {_md_escape(fp.get('reason', ''))} |")
    lines += ["", "Verdicts: " + ", ".join(f"`{v}`" for v in VERDICTS) + ".", ""]
    return "\n".join(lines)


def write_report(trace: Trace, specs: list[Spec], out_dir: str | Path) -> dict:
    """Write ``report.json``, ``report.md`` and ``latency-*.png`` into ``out_dir``; return the report dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(trace, specs, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    return report
