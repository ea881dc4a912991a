"""`callpath export --perfetto`: slices nest per thread track, every packet flow has both ends."""

import json
from collections import defaultdict
from pathlib import Path

from callpath.analysis.calltree import build_forest
from callpath.analysis.packets import assign_packets
from callpath.analysis.perfetto import trace_events
from callpath.analysis.trace import events_from_rows
from callpath.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"


def _check(events):
    slices = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            assert e["dur"] > 0
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for track, sl in slices.items():
        stack = []
        for s, t in sorted(sl, key=lambda x: (x[0], -x[1])):
            while stack and stack[-1] <= s:
                stack.pop()
            assert not stack or t <= stack[-1] + 1e-9, (track, s, t, stack[-1])  # nested, never overlapping
            stack.append(t)
    ends = defaultdict(list)
    for e in events:
        if e["ph"] in ("s", "f"):
            ends[e["id"]].append(e)
            inside = [(s, t) for s, t in slices[(e["pid"], e["tid"])] if s <= e["ts"] <= t]
            assert inside, e  # bound to a slice on its own track
    for fid, pair in ends.items():
        assert sorted(x["ph"] for x in pair) == ["f", "s"], fid
        s, f = sorted(pair, key=lambda x: x["ph"] == "f")
        assert f["ts"] >= s["ts"] and f.get("bp") == "e"
    return slices, ends


def test_export_of_the_real_fixture(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["export", str(FIXTURE), "--perfetto", str(out)]) == 0
    doc = json.loads(out.read_text())
    slices, flows = _check(doc["traceEvents"])
    assert sum(len(v) for v in slices.values()) > 1000 and len(flows) > 0
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"}
    assert len(names) == len(slices)  # one named track per thread
    assert "flow arrows" in capsys.readouterr().out


def test_flow_follows_a_packet_to_another_thread_and_lost_returns_still_nest():
    rows, ids = [], {}

    def ev(kind, fn, t, tid, skb=0, cpu=0):
        rows.append((len(rows), t, kind, ids.setdefault(fn, len(ids)), tid, tid, cpu, skb, 2, 1, 0, b"t"))

    A = 0xFFFF0000AAAA0000
    ev(0, "xmit", 100, 1, A); ev(0, "inner", 150, 1); ev(1, "xmit", 300, 1)  # inner lost its return
    ev(0, "rcv", 500, 2, A, cpu=1); ev(1, "rcv", 600, 2, cpu=1)
    events = events_from_rows(rows, {v: k for k, v in ids.items()})
    forest = build_forest(events)
    plan = {"xmit": {"skb_arg": 1}, "rcv": {"skb_arg": 1}}
    te = trace_events(forest, assign_packets(forest, plan))
    _, flows = _check(te)
    assert len(flows) == 1
    s, f = sorted(next(iter(flows.values())), key=lambda x: x["ph"] == "f")
    assert s["tid"] != f["tid"]


def test_export_of_a_missing_trace_is_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.parquet"), "--perfetto", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
