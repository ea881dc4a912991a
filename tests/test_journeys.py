"""Journeys per documented path: complete / partial / entry-only, latency, hops, hand-overs."""

from pathlib import Path

from callpath.analysis.calltree import build_forest
from callpath.analysis.journeys import exit_steps, handovers, packet_stats, path_journeys, report_blocks
from callpath.analysis.packets import assign_packets
from callpath.analysis.readers import read_spec
from callpath.analysis.spec import Path as SpecPath, Step
from callpath.analysis.trace import events_from_rows, read_trace

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def _path():
    steps = [Step("1", None, "xmit(skb)", "call", chain=["xmit"]),
             Step("1.1", "1", "lookup()", "call", chain=["lookup"]),
             Step("1.2", "1", "fwd(skb)", "call", chain=["fwd"]),
             Step("1.3", "1", "gone(skb)", "call", chain=["gone"])]
    return SpecPath("1", "xmit", "t:1", steps)


def _run(rows, ids):
    ev = events_from_rows(rows, {v: k for k, v in ids.items()})
    plan = {n: {"func_id": i, "skb_arg": 1 if n in ("xmit", "fwd", "other") else None} for n, i in ids.items()}
    plan["gone"] = {"status": "absent", "func_id": None}
    forest = build_forest(ev)
    return forest, plan, assign_packets(forest, plan)


def _builder():
    rows, ids, t = [], {}, [0]

    def e(fn, skb=0, tid=1, cpu=0, at=None, kind=0):
        t[0] = at if at is not None else t[0] + 100
        rows.append((len(rows), t[0], kind, ids.setdefault(fn, len(ids)), tid, tid, cpu, skb, 2, 5, 0, b"t"))
    return rows, ids, e


def test_exit_steps_take_the_nearest_probed_ancestor_of_an_unprobed_leaf():
    plan = {"xmit": {"func_id": 0}, "lookup": {"func_id": 1}, "fwd": {"func_id": 2}, "gone": {"func_id": None}}
    assert exit_steps(_path(), plan) == ["1", "1.1", "1.2"]


def test_complete_partial_and_entry_only_journeys_with_latency_and_hops():
    rows, ids, e = _builder()
    A, B, C = 0xA000, 0xB000, 0xC000
    # packet A: xmit > lookup, then fwd handed to another thread 1000 ns later
    e("xmit", A, at=1000); e("lookup", at=1100); e("lookup", kind=1, at=1200); e("xmit", kind=1, at=1300)
    e("fwd", A, tid=2, cpu=1, at=2000); e("fwd", tid=2, cpu=1, kind=1, at=2100)
    # packet B: seen only at xmit
    e("xmit", B, at=3000); e("xmit", kind=1, at=3100)
    # packet C: seen at fwd only (entry missing)
    e("fwd", C, at=4000); e("fwd", kind=1, at=4100)
    forest, plan, packets = _run(rows, ids)
    pj = path_journeys(_path(), plan, packets)
    st = {r.packet: r for r in pj.journeys.itertuples()}
    pa = packets.calls[packets.calls["skb"] != 0].groupby("skb")["packet"].first()
    assert st[pa[A]].status == "complete" and st[pa[A]].latency_ns == 1000 and st[pa[A]].threads == 2
    assert st[pa[B]].status == "entry-only"
    assert st[pa[C]].status == "partial" and "entry step 1 not seen" in st[pa[C]].reason
    s = packet_stats(pj)
    assert (s["count"], s["partial"], s["entry_only"], s["cross_thread"]) == (1, 1, 1, 1)
    assert s["p50_ns"] == s["max_ns"] == 1000
    assert [(h["from"], h["to"]) for h in s["hops"]] == [("1 xmit", "1.1 lookup"), ("1.1 lookup", "1.2 fwd")]
    assert sum(h["p50_ns"] for h in s["hops"]) == 1000  # hops add up to the whole path
    assert pj.median_packet() == pa[A]


def test_fixture_macvlan_unicast_is_followed_from_start_xmit_into_macvlan_handle_frame():
    trace = read_trace(FIXTURE)
    plan = trace.meta["plan"]["functions"]
    forest = build_forest(trace.events)
    packets = assign_packets(forest, plan)
    specs = [read_spec(SPECS / "macvlan-newlink-xmit.txt"), read_spec(SPECS / "veth-macvlan-notes.md")]
    blocks = report_blocks(specs, forest, plan, packets)
    names = [p.name for s in specs for p in s.paths]
    i_xmit = names.index("macvlan_start_xmit(skb, dev)")
    i_rx = next(i for i, n in enumerate(names) if "__netif_receive_skb_core" in n)
    xmit = blocks[i_xmit][1]
    assert xmit["count"] > 0 and xmit["p50_ns"] > 0
    assert all(h["count"] > 0 and h["p99_ns"] >= h["p50_ns"] for h in xmit["hops"])
    to_rx = [h for h in xmit["next"] if h["to"] == i_rx]
    assert to_rx and to_rx[0]["count"] >= 20  # the workload sends 20 unicast datagrams mv0 -> mv1
    med = xmit["median"]
    assert med and med["calls"][0]["function"] == "macvlan_start_xmit"
    assert "macvlan_handle_frame" in [c["function"] for c in blocks[i_rx][1]["median"]["calls"]]
    # paths without packet steps (link creation) report zero, not an error
    assert blocks[names.index("macvlan_common_newlink(src_net, dev, tb[], data, extack)")][1]["count"] == 0


def test_handovers_empty_input():
    assert handovers([]) == {}
