"""``report.html``: the report as one self-contained page that opens offline.

No network, no CDN, no script: styles inline, PNG plots embedded as
``data:image/png;base64`` URIs, every text from documents, traces and the
kernel passed through :func:`html.escape`. Layout: summary table; per path the
steps as a nested tree (``<details>``) with verdict and evidence; the packet
latency table, plots and the median packet's journey as a waterfall (one bar
per call, offset and width in ns, scaled to the journey).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:75em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
code{font-size:90%}.v-observed{color:#1a7f37}.v-observed-out-of-order{color:#b35900}.v-not-exercised{color:#b00020}
.v-absent,.v-not-traceable,.v-not-a-call{color:#666}details{margin-left:1.2em}summary{cursor:pointer}
.wf{position:relative;height:16px;background:#f3f3f3;min-width:30em}.wf span{position:absolute;top:2px;height:12px;background:#4878a8}
.wf span.doc{background:#55a868}img{max-width:100%}
"""


def _e(text) -> str:
    return escape("" if text is None else str(text), quote=True)


def _num(v) -> str:
    return "" if v is None else f"{v:,.0f}"


def _img(out_dir: Path, name: str | None, alt: str) -> str:
    if not name or Path(name).name != name or not (out_dir / name).is_file():  # only files beside the report
        return ""
    data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _step_tree(path: dict) -> str:
    steps = path["steps"]
    children: dict[str | None, list[dict]] = {}
    numbers = {s["number"] for s in steps}
    for s in steps:
        parent = s["number"].rsplit(".", 1)[0] if "." in s["number"] else None
        while parent is not None and parent not in numbers:
            parent = parent.rsplit(".", 1)[0] if "." in parent else None
        children.setdefault(parent if s is not steps[0] else None, []).append(s)

    def node(s: dict) -> str:
        ev = " &gt; ".join(_e(f) for f in s.get("evidence") or [])
        head = (f'<code>{_e(s["number"])}</code> <code>{_e(s["text"])}</code> '
                f'<b class="v-{_e(s["verdict"])}">{_e(s["verdict"])}</b> ({_e(s.get("count", 0))})'
                + (f' <small>probe: {_e(s["probe"])}</small>' if s.get("probe") else ""))
        body = f'<div>{_e(s.get("detail"))}' + (f'<br>evidence: <code>{ev}</code>' if ev else "") + "</div>"
        kids = "".join(node(c) for c in children.get(s["number"], []))
        return f"<details open><summary>{head}</summary>{body}{kids}</details>"

    return "".join(node(s) for s in children.get(None, []))


def _waterfall(median: dict | None) -> str:
    if not median or not median.get("calls"):
        return ""
    calls = median["calls"]
    span = max([c["offset_ns"] + (c["duration_ns"] or 0) for c in calls] + [1])
    rows = []
    for c in calls:
        left = 100.0 * c["offset_ns"] / span
        width = max(100.0 * (c["duration_ns"] or 0) / span, 0.3)
        cls = "doc" if c["step"] else ""
        rows.append(
            f'<tr><td><code>{_e(c["step"])}</code></td><td><code>{_e(c["function"])}</code></td>'
            f'<td>{_num(c["offset_ns"])}</td><td>{_num(c["duration_ns"])}</td><td>{_e(c["tid"])} ({_e(c["comm"])})</td>'
            f'<td>{_e(c["cpu"])}</td><td>{_e(c["ifindex"])}</td><td>{_e(c["netns"])}</td><td>{_e(c["via"])}</td>'
            f'<td><div class="wf"><span class="{cls}" style="left:{left:.2f}%;width:{width:.2f}%"></span></div></td></tr>')
    return (f'<h4>Median packet (#{_e(median["packet"])}, path latency {_num(median["latency_ns"])} ns): its calls from the '
            'path entry on</h4><table><tr><th>step</th><th>function</th><th>offset ns</th><th>duration ns</th><th>thread</th>'
            '<th>cpu</th><th>ifindex</th><th>netns</th><th>packet via</th><th>waterfall</th></tr>' + "".join(rows) + "</table>")


def _packets(path: dict, names: list[str], out_dir: Path) -> str:
    b = path.get("packets") or {}
    if not (b.get("count") or b.get("partial") or b.get("entry_only")):
        return "<p>No packet was seen on this path's documented steps.</p>"
    out = [f'<p>Packets followed end to end: <b>{_e(b["count"])}</b>; partial: {_e(b["partial"])}; seen only at the entry '
           f'step: {_e(b["entry_only"])}; crossed threads/CPUs: {_e(b.get("cross_thread", 0))}.</p>']
    if b.get("partial_reasons"):
        out.append("<ul>" + "".join(f"<li>partial: {_e(n)} packets, {_e(w)}</li>" for w, n in b["partial_reasons"].items()) + "</ul>")
    out.append("<table><tr><th>p50 ns</th><th>p90 ns</th><th>p99 ns</th><th>max ns</th></tr>"
               f"<tr><td>{_num(b['p50_ns'])}</td><td>{_num(b['p90_ns'])}</td><td>{_num(b['p99_ns'])}</td><td>{_num(b['max_ns'])}</td></tr></table>")
    if b.get("hops"):
        out.append("<table><tr><th>from</th><th>to</th><th>count</th><th>p50 ns</th><th>p99 ns</th></tr>" + "".join(
            f"<tr><td><code>{_e(h['from'])}</code></td><td><code>{_e(h['to'])}</code></td><td>{_e(h['count'])}</td>"
            f"<td>{_num(h['p50_ns'])}</td><td>{_num(h['p99_ns'])}</td></tr>" for h in b["hops"]) + "</table>")
    if b.get("next"):
        out.append("<p>Went on to: " + "; ".join(
            f"{_e(names[h['to']])} ({_e(h['count'])} packets, hand-over p50 {_num(h['p50_ns'])} ns, "
            f"{_e(h['cross_thread'])} changed thread/CPU)" for h in b["next"]) + "</p>")
    for kind, name in (b.get("plots") or {}).items():
        out.append(_img(out_dir, name, f"{kind} plot"))
    out.append(_waterfall(b.get("median")))
    return "".join(out)


def render_html(report: dict, out_dir: str | Path) -> str:
    """The report dict (see :mod:`analysis.report`) as one HTML document; plots
    named in it are read from ``out_dir`` and embedded."""
    out_dir = Path(out_dir)
    names = [f"{p['number']}. {p['name'][:50]}" for p in report["paths"]]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>callpath report: {_e(report['kernel'])}"
             f"</title><style>{CSS}</style></head><body><h1>callpath path-conformance report</h1>",
             f"<p>kernel <code>{_e(report['kernel'])}</code> ({_e(report.get('where') or 'running kernel')}), probes: "
             f"{_e(report.get('mechanism'))}; events {_e(report.get('events'))}, lost {_e(report.get('lost'))}; "
             f"mode: {_e(report.get('mode', 'per-event'))}.</p>",
             f"<p>Packet identity: {_e((report.get('packet_identity') or {}).get('how'))}.</p>",
             "<h2>Summary</h2><table id=\"summary\"><tr><th>path</th><th>source</th><th>observed / checkable</th>"
             "<th>packets end to end</th><th>p50 ns</th><th>p99 ns</th></tr>"]
    for i, (p, name) in enumerate(zip(report["paths"], names)):
        b = p.get("packets") or {}
        parts.append(f'<tr><td><a href="#path-{i}">{_e(name)}</a></td><td><code>{_e(p["source"])}</code></td>'
                     f'<td>{_e(p["summary"]["observed"])} / {_e(p["summary"]["checkable"])}</td><td>{_e(b.get("count", ""))}</td>'
                     f'<td>{_num(b.get("p50_ns"))}</td><td>{_num(b.get("p99_ns"))}</td></tr>')
    parts.append("</table>")
    for i, (p, name) in enumerate(zip(report["paths"], names)):
        parts.append(f'<section class="path" id="path-{i}"><h2>{_e(name)}</h2><p>Source: <code>{_e(p["source"])}</code>'
                     + (f'; triggered by <code>{_e(p["trigger"])}</code>' if p.get("trigger") else "") + "</p>"
                     + _step_tree(p) + "<h3>Packets</h3>" + _packets(p, names, out_dir) + "</section>")
    if report.get("latency") and report.get("latency_source", "").startswith("counted"):
        parts.append("<h2>Latency per call (entry to return), counted in the kernel (log2 buckets)</h2><p>No per-packet "
                     "journeys: this mode keeps no skb identity.</p><table><tr><th>function</th><th>calls</th><th>p50</th>"
                     "<th>p99</th><th>max</th><th>mean ns</th></tr>" + "".join(
                         f"<tr><td><code>{_e(r['function'])}</code></td><td>{_e(r['count'])}</td><td>{_e(r['p50_range'])}</td>"
                         f"<td>{_e(r['p99_range'])}</td><td>{_e(r['max_range'])}</td><td>{_num(r.get('mean_ns'))}</td></tr>"
                         for r in report["latency"]) + "</table>")
        parts += [_img(out_dir, r.get("plot"), r["function"]) for r in report["latency"]]
    elif report.get("latency"):
        parts.append("<h2>Per-function latency (entry to return)</h2><table><tr><th>function</th><th>calls</th><th>p50 ns</th>"
                     "<th>p99 ns</th><th>max ns</th></tr>" + "".join(
                         f"<tr><td><code>{_e(r['function'])}</code></td><td>{_e(r['count'])}</td><td>{_num(r['p50_ns'])}</td>"
                         f"<td>{_num(r['p99_ns'])}</td><td>{_num(r['max_ns'])}</td></tr>" for r in report["latency"]) + "</table>")
        parts += [_img(out_dir, r.get("plot"), r["function"]) for r in report["latency"]]
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(report: dict, out_dir: str | Path) -> Path:
    """Write ``report.html`` into ``out_dir``; return its path. Raises ``OSError``."""
    out = Path(out_dir) / "report.html"
    out.write_text(render_html(report, out_dir), encoding="utf-8")
    return out
