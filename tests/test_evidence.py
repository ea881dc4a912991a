"""No verdict without evidence: foreign traces, lost returns, open frames, clocks that run backwards."""

import json

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs, unrecorded_functions
from callpath.analysis.latency import latency_stats, packet_samples
from callpath.analysis.outline import parse_outline
from callpath.analysis.report import build_report, render_markdown
from callpath.analysis.trace import Trace, write_trace
from callpath.cli import main

from synthetic import EventBuilder, c

LOOPBACK = "1. loopback_xmit(skb, dev)\n1.1 dev_forward_skb(dev, skb)\n"
NESTED = "1. outer_fn()\n1.1 inner_fn()\n"


def verdicts(doc, builder, **plan_kw):
    spec = parse_outline(doc, "doc.txt")
    forest = build_forest(builder.events())
    ((_, (path, *_)),) = check_specs([spec], forest, builder.plan(**plan_kw))
    return {s.number: s for s in path.steps}


def veth_trace():
    """A trace recorded for a veth document: veth_xmit > dev_forward_skb, nothing of loopback."""
    b = EventBuilder()
    for _ in range(3):
        b.call("veth_xmit", c("dev_forward_skb"), skb=0x10)
    return b


def test_foreign_trace_claims_nothing():
    b = veth_trace()
    v = verdicts(LOOPBACK, b)
    # the root was never probed: not "not-traceable" (which means cannot attach)
    assert v["1"].verdict == "not-recorded" and "not in its probe plan" in v["1"].detail
    # dev_forward_skb was probed and ran, but under veth_xmit: the documented
    # caller loopback_xmit was not recorded, so nothing is claimed
    assert v["1.1"].verdict == "not-recorded" and v["1.1"].count == 0
    assert "loopback_xmit" in v["1.1"].detail
    assert unrecorded_functions([parse_outline(LOOPBACK, "doc.txt")], b.plan()) == ["loopback_xmit"]


def test_traceable_without_slot_is_not_recorded():
    b = EventBuilder()
    b.call("outer_fn")
    v = verdicts(NESTED, b, unprobed=["inner_fn"])
    assert v["1.1"].verdict == "not-recorded" and "no probe slot" in v["1.1"].detail


def test_known_absent_caller_still_falls_back_to_nearest_recorded():
    # an absent (inlined) caller is a kernel fact from the trace's plan, not a gap
    doc = "1. outer_fn()\n1.1 inlined_fn()\n1.1.1 inner_fn()\n"
    b = EventBuilder()
    b.call("outer_fn", c("inner_fn"))
    v = verdicts(doc, b, absent=["inlined_fn"])
    assert v["1.1"].verdict == "absent" and v["1.1.1"].verdict == "observed"


def test_report_and_cli_name_unrecorded_functions(tmp_path, capsys):
    b = veth_trace()
    trace = Trace(events=b.events(), meta={"kernel": "test-1", "plan": {"functions": b.plan()}, "lost": 0})
    spec = parse_outline(LOOPBACK, "loopback.txt")
    rep = build_report(trace, [spec])
    assert rep["not_recorded"] == ["loopback_xmit"]
    assert rep["paths"][0]["summary"]["observed"] == 0
    assert rep["paths"][0]["summary"]["verdicts"]["not-recorded"] == 2
    md = render_markdown(rep)
    assert "not recorded in this trace (verdict `not-recorded`): `loopback_xmit`" in md
    path = write_trace(trace, tmp_path / "t.parquet")
    doc = tmp_path / "loopback.txt"
    doc.write_text(LOOPBACK)
    assert main(["report", str(path), "--spec", str(doc), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "not recorded in this trace" in err and "loopback_xmit" in err
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["not_recorded"] == ["loopback_xmit"]


def test_all_returns_missing():
    b = EventBuilder()
    for _ in range(3):
        b.entry("outer_fn").entry("inner_fn")  # every kretprobe lost
    forest = build_forest(b.events())
    assert forest.unterminated == 6 and forest.open_at_end == 6 and forest.lost_returns == 0
    v = verdicts(NESTED, b)
    # the root ran (its entries prove that much) ...
    assert v["1"].verdict == "observed" and v["1"].count == 3
    # ... but no frame returned, so nothing proves inner_fn ran inside outer_fn
    assert v["1.1"].verdict == "not-exercised" and v["1.1"].count == 0
    assert v["1.1"].unproven == 3 and "nesting not proven" in v["1.1"].detail
    trace = Trace(events=b.events(), meta={"kernel": "t", "plan": {"functions": b.plan()}})
    rep = build_report(trace, [parse_outline(NESTED, "doc.txt")])
    assert rep["unterminated"] == 6
    assert "calls without return: 6 (0 closed by an enclosing return, 6 still open at trace end" in render_markdown(rep)
    assert rep["paths"][0]["summary"]["observed"] == 1


def test_lost_return_of_caller_does_not_prove_nesting():
    doc = "1. top_fn()\n1.1 outer_fn()\n1.1.1 inner_fn()\n"
    b = EventBuilder()
    # outer_fn's return is lost; inner_fn may have run after outer_fn returned
    b.entry("top_fn").entry("outer_fn").entry("inner_fn").ret("inner_fn").ret("top_fn")
    forest = build_forest(b.events())
    assert forest.lost_returns == 1 and forest.unterminated == 1 and forest.open_at_end == 0
    v = verdicts(doc, b)
    assert v["1.1"].verdict == "observed"  # its entry inside a complete top_fn is enough
    assert v["1.1.1"].verdict == "not-exercised" and v["1.1.1"].unproven == 1
    # a complete call next to it is counted; the unproven one is said, not counted
    b.call("top_fn", c("outer_fn", c("inner_fn")))
    v = verdicts(doc, b)
    assert v["1.1.1"].verdict == "observed" and v["1.1.1"].count == 1 and v["1.1.1"].unproven == 1
    assert "without their own return" in v["1.1.1"].detail


def test_frame_open_at_trace_end():
    b = EventBuilder()
    b.entry("outer_fn").call("inner_fn")  # outer_fn never returns before the trace ends
    forest = build_forest(b.events())
    assert forest.open_at_end == 1 and forest.unterminated == 1
    v = verdicts(NESTED, b)
    assert v["1.1"].verdict == "not-exercised" and v["1.1"].unproven == 1


def test_backwards_timestamps_are_a_defect_and_never_a_negative_latency():
    b = EventBuilder()
    b.call("veth_xmit", skb=0x10)
    b.entry("veth_xmit", skb=0x20).ret("veth_xmit", dt=-500)  # return stamped before its entry
    b.entry("veth_xmit", skb=0x30, tid=7).ret("veth_xmit", tid=7)  # another thread: fine
    forest = build_forest(b.events())
    assert forest.time_backwards == 1
    first = forest.time_backwards_first
    assert first["function"] == "veth_xmit" and first["ts_ns"] < first["previous_ts_ns"] and first["seq"] == 3
    fr = forest.frames
    assert fr["duration_ns"].dropna().ge(0).all() and fr["duration_ns"].isna().sum() == 1
    samples = packet_samples(forest, ["veth_xmit"])
    assert len(samples) == 2 and (samples["duration_ns"] >= 0).all()
    assert latency_stats(samples)["p50_ns"].min() >= 0
    trace = Trace(events=b.events(), meta={"kernel": "t", "plan": {"functions": b.plan(skb=["veth_xmit"])}})
    rep = build_report(trace, [parse_outline("1. veth_xmit(skb, dev)\n", "doc.txt")])
    assert rep["time_backwards"]["count"] == 1 and rep["time_backwards"]["first"]["seq"] == 3
    assert all(r["p50_ns"] >= 0 and r["max_ns"] >= 0 for r in rep["latency"])
    assert rep["paths"][0]["steps"][0]["mean_ns"] >= 0
    assert "**trace defect**: 1 timestamps go backwards" in render_markdown(rep)
