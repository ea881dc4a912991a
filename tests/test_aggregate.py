"""Counting mode (``--aggregate``): the conformance report from the kernel's counts.

The verdict test replays a per-event trace recorded on a real kernel (Debian
6.1.0-56-amd64 in the lab VM) through ``tests/reference_aggregate.py``, a
plain-Python model of the BPF counting code, and judges both the events and
the counts against the shipped documents.
"""

from pathlib import Path

import numpy as np
import pytest

from callpath.analysis.aggregate import build_aggregate_forest, hist_table, mode_label
from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.latency import bucket_stats
from callpath.analysis.outline import parse_outline
from callpath.analysis.readers import read_specs
from callpath.analysis.report import build_report, render_markdown
from callpath.analysis.html_report import render_html
from callpath.analysis.trace import Trace, read_trace

from reference_aggregate import aggregate_events, aggregate_trace
from synthetic import EventBuilder, c

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def steps(results):
    return {(Path(spec.source).name, p.number, s.number): s for spec, paths in results for p in paths for s in p.steps}


@pytest.fixture(scope="module")
def both():
    trace = read_trace(FIXTURE)
    agg = aggregate_trace(trace)
    specs = read_specs([str(SPECS)])
    plan, failed = trace.meta["plan"]["functions"], trace.meta.get("attach_failed")
    per_event = steps(check_specs(specs, build_forest(trace.events), plan, failed))
    counted = steps(check_specs(specs, build_aggregate_forest(agg.meta, agg.events), plan, failed))
    return trace, agg, specs, per_event, counted


def test_fixture_verdicts_agree(both):
    _, agg, _, per_event, counted = both
    a = agg.meta["aggregate"]
    assert a["depth_overflow"] == a["unmatched_returns"] == 0
    assert len(agg.events) and set(agg.events["mechanism"].astype(str)) == {"function_graph", "kprobe_events"}
    assert per_event.keys() == counted.keys()
    assert sum(s.verdict == "observed" for s in per_event.values()) > 50
    for key, x in per_event.items():
        y = counted[key]
        assert (y.verdict, y.count, y.unproven, y.evidence, y.mechanism) == \
            (x.verdict, x.count, x.unproven, x.evidence, x.mechanism), key
        assert (y.mean_ns is None) == (x.mean_ns is None) and (x.mean_ns is None or y.mean_ns == pytest.approx(x.mean_ns)), key
        if (y.in_order, y.out_of_order) != (x.in_order, x.out_of_order):
            # first appearances only: a sibling repeating an earlier sibling's function is not judged
            assert (y.in_order, y.out_of_order) == (0, 0) and key == ("veth-macvlan-notes.md", "1", "1.2.4"), key


def test_fixture_report_says_counting_mode(both, tmp_path):
    trace, agg, specs, _, _ = both
    rep = build_report(agg, specs, tmp_path)
    assert rep["mode"] == "aggregate (counted in BPF maps)" == mode_label(agg.meta)
    assert rep["aggregate"]["paths"] == len(agg.meta["aggregate"]["paths"])
    assert rep["latency_source"] == "counted in the kernel (log2 buckets)"
    assert rep["probes"]["macvlan_start_xmit"] == "kprobe"  # a trace from before the plan said: kprobe
    row = next(r for r in rep["latency"] if r["function"] == "macvlan_start_xmit")
    assert row["count"] > 0 and row["mean_ns"] > 0
    assert row["p50_range"].startswith("[") and row["buckets"] and row["plot"]
    assert not any(p["packets"]["count"] for p in rep["paths"])
    md = render_markdown(rep)
    assert "- mode: aggregate (counted in BPF maps)" in md and "counted in the kernel (log2 buckets)" in md
    assert "no skb identity" in md and "| probe |" in md
    assert "mode: aggregate (counted in BPF maps)" in render_html(rep, tmp_path)
    per_event = build_report(trace, specs)
    assert per_event["mode"] == "per-event" and "- mode: per-event" in render_markdown(per_event)


def test_histogram_counts_match_events(both):
    trace, agg, *_ = both
    f = build_forest(trace.events)
    fr = f.frames[(f.frames["function"] == "macvlan_start_xmit") & f.frames["complete"]]
    h = hist_table(agg.meta)
    h = h[h["function"] == "macvlan_start_xmit"]
    assert h["count"].sum() == len(fr)
    d = fr["duration_ns"].to_numpy().astype(np.int64)
    expect = np.bincount(np.floor(np.log2(np.maximum(d, 1))).astype(int))
    assert dict(zip(h["bucket"], h["count"])) == {b: n for b, n in enumerate(expect) if n}


def counted_verdicts(doc, agg, plan, events=None):
    spec = parse_outline(doc, "doc.txt")
    forest = build_aggregate_forest({"mode": "aggregate", "aggregate": agg, "plan": {"functions": plan}}, events)
    ((_, (path, *_)),) = check_specs([spec], forest, plan)
    return {s.number: s for s in path.steps}


PLAN = {n: {"status": "traceable", "symbol": n, "func_id": i} for i, n in enumerate(["p", "a", "b", "x"])}


def test_out_of_order_from_the_order_table():
    doc = "1. p()\n1.1 a()\n1.2 b()\n"
    agg = {"paths": [{"path": ["p"], "calls": 4, "sum_ns": 400}, {"path": ["p", "a"], "calls": 4, "sum_ns": 40},
                     {"path": ["p", "b"], "calls": 4, "sum_ns": 80}],
           "order": [{"parent": ["p"], "children": ["b", "a"], "calls": 3},
                     {"parent": ["p"], "children": ["a", "b"], "calls": 1}]}
    v = counted_verdicts(doc, agg, PLAN)
    assert (v["1.1"].in_order, v["1.1"].out_of_order) == (4, 0)
    assert v["1.2"].verdict == "observed-out-of-order" and (v["1.2"].in_order, v["1.2"].out_of_order) == (1, 3)
    agg["order"][0]["calls"] = 1  # a tie is out of order (the per-event rule: out >= in)
    assert counted_verdicts(doc, agg, PLAN)["1.2"].verdict == "observed-out-of-order"
    agg["order"][1]["calls"] = 2
    assert counted_verdicts(doc, agg, PLAN)["1.2"].verdict == "observed"


def test_weights_are_counts_and_means():
    doc = "1. p()\n1.1 a()\n1.2 b()\n"
    agg = {"paths": [{"path": ["p"], "calls": 1000, "sum_ns": 10**6}, {"path": ["p", "a"], "calls": 700, "sum_ns": 7000},
                     {"path": ["x", "a"], "calls": 5, "sum_ns": 5000}, {"path": ["x", "b"], "calls": 50, "sum_ns": 0}],
           "order": []}
    v = counted_verdicts(doc, agg, PLAN)
    assert v["1"].count == 1000 and v["1.1"].count == 700 and v["1.1"].detail == "700 calls inside p"
    assert v["1.1"].mean_ns == pytest.approx(10.0)
    assert v["1.2"].verdict == "not-exercised" and v["1.2"].detail == "ran 50 times, never inside p"
    # a path whose caller never closed with its own return proves no nesting: unproven, weighted
    agg["paths"] = [{"path": ["p", "a"], "calls": 30, "sum_ns": 300}]
    v = counted_verdicts(doc, agg, PLAN)
    assert v["1.1"].verdict == "not-exercised" and v["1.1"].unproven == 30


def test_forest_size_is_distinct_paths_not_calls():
    b = EventBuilder()
    for _ in range(2000):
        b.call("p", c("a"), c("b"))
    agg, rest = aggregate_events(b.events())
    assert len(rest) == 0
    f = build_aggregate_forest({"mode": "aggregate", "aggregate": agg, "plan": {"functions": b.plan()}})
    assert len(f.frames) == 3 and f.count(f.frames_of("a")) == 2000
    assert agg["order"] == [{"parent": ["p"], "children": ["a", "b"], "calls": 2000}]


def test_reference_depth_overflow_and_unmatched():
    b = EventBuilder()
    names = [f"f{i}" for i in range(20)]
    call = None
    for n in reversed(names):
        call = c(n, call) if call else c(n)
    call(b)
    b.call("f0", c("f1"))  # the stack recovers after the deep call
    b.ret("g")              # a return without its entry
    agg, _ = aggregate_events(b.events())
    assert agg["depth_overflow"] == 4 and agg["unmatched_returns"] == 1
    paths = {tuple(p["path"]): p["calls"] for p in agg["paths"]}
    assert max(len(p) for p in paths) == 16 and paths[("f0", "f1")] == 2 and paths[("f0",)] == 2
    assert ("f0",) + tuple(names[1:16]) in paths and not any("f16" in p for p in paths)


def test_inline_sites_are_counted_leaves():
    b = EventBuilder()
    for _ in range(3):
        b.call("p", lambda b: b.entry("site_fn"))
    ev = b.events()
    ev["mechanism"] = np.where(ev["function"] == "site_fn", "inline-site", "kprobe")
    plan = b.plan()
    plan["site_fn"] = {"status": "inlined", "symbol": None, "func_id": 1, "probe": "inline-site",
                       "inline_sites": [{"symbol": "p", "offset": 33, "probe": "p+33", "func_id": 1}]}
    agg, _ = aggregate_events(ev)
    assert {tuple(p["path"]): (p["calls"], p["sum_ns"]) for p in agg["paths"]}[("p", "site_fn")] == (3, 0)
    assert not any(h["function"] == "site_fn" for h in agg["hist"])
    v = counted_verdicts("1. p()\n1.1 site_fn()\n", agg, plan)
    assert v["1.1"].verdict == "observed" and v["1.1"].count == 3 and v["1.1"].mechanism == "inline-site"
    assert "p+33 3×" in v["1.1"].detail


def test_non_bpf_events_still_count():
    b = EventBuilder()
    b.call("p", c("a"))
    ev = b.events()
    ev["mechanism"] = "function_graph"
    agg = {"paths": [{"path": ["p"], "calls": 2, "sum_ns": 20}, {"path": ["p", "b"], "calls": 2, "sum_ns": 2}]}
    v = counted_verdicts("1. p()\n1.1 a()\n1.2 b()\n", agg, PLAN, events=ev)
    assert v["1"].count == 3 and v["1.1"].count == 1 and v["1.2"].count == 2


def test_bucket_stats_ranges():
    meta = {"aggregate": {"hist": [{"function": "f", "bucket": 10, "count": 50}, {"function": "f", "bucket": 11, "count": 49},
                                   {"function": "f", "bucket": 20, "count": 1}]}}
    s = bucket_stats(hist_table(meta), {"f": 1500.0}).iloc[0]
    assert s["count"] == 100 and s["p50_range"] == "[1.0 us, 2.0 us)" and s["p90_range"] == "[2.0 us, 4.1 us)"
    assert s["max_ns"] == 2 ** 21 and s["mean_ns"] == 1500.0


@pytest.mark.xfail(strict=True, reason="counting mode: a lost return (kretprobe maxactive) leaves a stale frame that "
                   "no later return clears; long-lived threads fill the 16-deep stack and stop counting")
def test_verdicts_agree_with_lost_returns():
    trace = read_trace(FIXTURE)
    ev = trace.events
    rng = np.random.default_rng(0)
    drop = ((ev["kind"] == 1) & (ev["mechanism"] == "kprobe")).to_numpy() & (rng.random(len(ev)) < 0.05)
    damaged = Trace(events=ev[~drop].reset_index(drop=True), meta=trace.meta)
    agg = aggregate_trace(damaged)
    specs = read_specs([str(SPECS)])
    plan = trace.meta["plan"]["functions"]
    x = steps(check_specs(specs, build_forest(damaged.events), plan))
    y = steps(check_specs(specs, build_aggregate_forest(agg.meta, agg.events), plan))
    assert {k: s.verdict for k, s in x.items()} == {k: s.verdict for k, s in y.items()}
