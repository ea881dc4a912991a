"""Analysis of a trace recorded from a real kernel: Debian 6.1.0-56-amd64 in the lab VM.

Recorded with `callpath verify specs/ --packets 20` under virtme-ng/QEMU TCG:
all three built-in workloads (veth with and without GRO/NAPI; macvlan with
receive traffic + a macvtap link; ipvlan + an ipvtap link), the boot-time
function_graph of net_dev_init, and kprobe events while macvtap loaded. The
kernel release and the probe plan are in the file's metadata; the raw ftrace
text behind the run-once evidence sits beside it.
"""

import json
from pathlib import Path

import pytest

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.readers import read_specs
from callpath.analysis.trace import TraceError, read_trace, write_trace
from callpath.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "lab-6.1.0-56-amd64-all-paths.parquet"
SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(scope="module")
def trace():
    return read_trace(FIXTURE)


@pytest.fixture(scope="module")
def results(trace):
    forest = build_forest(trace.events)
    specs = read_specs([str(SPECS)])
    out = {}
    for spec, paths in check_specs(specs, forest, trace.meta["plan"]["functions"], trace.meta.get("attach_failed")):
        for p in paths:
            out[(Path(spec.source).name, p.number)] = {s.number: s for s in p.steps}
    return forest, out


def test_metadata_says_which_kernel(trace):
    assert trace.kernel == "6.1.0-56-amd64"
    assert trace.meta["lost"] == 0 and trace.meta["events"] == len(trace.events)
    assert {w["name"] for w in trace.meta["workloads"]} == {"veth", "macvlan", "ipvlan"}


def test_real_trace_rebuilds_cleanly(results):
    forest, _ = results
    assert forest.orphan_returns == 0
    # every frame of a probed function closed by its own return
    assert forest.frames["complete"].mean() > 0.99


def test_macvlan_verdicts_on_6_1(results):
    _, r = results
    xmit = r[("macvlan-newlink-xmit.txt", "3")]
    assert xmit["3"].verdict == "observed"
    assert xmit["3.1"].verdict == "absent"            # macvlan_queue_xmit inlined in 6.1
    assert xmit["3.1.2"].verdict == "observed"        # macvlan_hash_lookup inside macvlan_start_xmit
    assert xmit["3.1.3"].verdict == "observed"        # dev_forward_skb
    assert xmit["3.1.1.3"].verdict == "absent" and "netif_rx" in xmit["3.1.1.3"].detail
    assert xmit["3.1.4"].verdict == "not-a-call"


def test_ipvlan_l3_transmit_on_6_1(results):
    _, r = results
    xmit = r[("ipvlan-ipvtap-newlink-l3-xmit.txt", "2")]
    assert xmit["2"].verdict == "observed"
    assert xmit["2.1.5"].evidence[-1] == "ipvlan_process_v4_outbound"
    assert xmit["2.1.3.1"].verdict == "observed"  # ipvlan_rcv_frame > dev_forward_skb (ipv0 -> ipv1)


def test_macvtap_newlink_order(results):
    _, r = results
    link = r[("macvtap-init-newlink.txt", "2")]
    # netdev_rx_handler_register then macvlan_common_newlink, as documented
    assert link["2.2.2"].verdict == "observed" and link["2.2.3"].verdict == "observed"
    assert link["2.2.3"].in_order >= 1 and link["2.2.3"].out_of_order == 0


def test_report_cli_reanalyses_without_root(tmp_path):
    out = tmp_path / "again"
    assert main(["report", str(FIXTURE), "--spec", str(SPECS), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kernel"] == "6.1.0-56-amd64"
    path = next(p for p in report["paths"] if p["name"] == "macvlan_start_xmit(skb, dev)")
    assert path["source"].endswith("macvlan-newlink-xmit.txt:33")
    assert {s["verdict"] for s in path["steps"]} <= set(report["verdict_vocabulary"])
    assert path["summary"]["observed"] <= path["summary"]["checkable"]
    lat = {r["function"]: r for r in report["latency"]}
    assert lat["macvlan_start_xmit"]["p50_ns"] <= lat["macvlan_start_xmit"]["p99_ns"]
    assert (out / lat["veth_xmit"]["plot"]).exists()
    md = (out / "report.md").read_text()
    assert "| 3.1 | `macvlan_queue_xmit(skb, dev)` | **absent** |" in md


def test_trace_round_trip_and_errors(trace, tmp_path):
    p = write_trace(trace, tmp_path / "t.parquet")
    again = read_trace(p)
    assert again.meta == json.loads(json.dumps(trace.meta))
    assert again.events.equals(trace.events)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TraceError, match="not a Parquet trace"):
        read_trace(tmp_path / "bad.parquet")
    with pytest.raises(TraceError, match="no such trace"):
        read_trace(tmp_path / "missing.parquet")
    assert main(["report", str(tmp_path / "missing.parquet")]) == 2


def test_mechanisms_in_one_trace(trace):
    counts = trace.events["mechanism"].value_counts().to_dict()
    assert set(counts) == {"kprobe", "function_graph", "kprobe_events"}
    assert trace.meta["boot_graph"]["calls"] > 1000
    assert trace.meta["module_init"]["macvtap"]["events"] == 20


def test_boot_and_module_init_paths(results):
    _, r = results
    boot = r[("net-dev-init-boot.txt", "1")]
    assert boot["1"].verdict == "observed" and boot["1"].mechanism == "function_graph"
    assert boot["1.5.1.2"].evidence == ["net_dev_init", "register_pernet_subsys", "register_pernet_operations", "ops_init"]
    assert boot["1.2.2"].verdict == "absent" and "__class_register" in boot["1.2.2"].detail  # a macro over __class_register
    assert boot["1"].returns == {}  # function_graph records no return values
    init = r[("macvtap-init-newlink.txt", "1")]
    assert init["1"].verdict == "observed" and init["1"].mechanism == "kprobe_events"
    assert init["1.1.1"].evidence == ["macvtap_init", "tap_create_cdev", "alloc_chrdev_region"]
    # macvlan's own module init registers a notifier too, before macvtap_init runs:
    # only the call inside macvtap_init counts
    assert init["1.3"].count == 1


def test_receive_paths_on_6_1(results):
    _, r = results
    rx = r[("veth-macvlan-notes.md", "6")]
    h = rx["6.1"]
    assert h.returns["RX_HANDLER_ANOTHER"] >= 20 and h.returns["RX_HANDLER_PASS"] >= 20
    napi = r[("veth-macvlan-notes.md", "3")]
    assert napi["3"].verdict == "absent" and "__napi_poll" in napi["3"].detail  # napi_poll: not a symbol in 6.1
    assert napi["3.1"].verdict == "observed" and napi["3.1.1.1"].verdict == "observed"
    assert napi["3.1.1.1"].returns == {"GRO_HELD": 20}  # enum gro_result, named from BTF
    assert napi["3.1.1.2"].verdict == "not-exercised"


def test_documented_register_netdev_is_not_what_6_1_calls(results):
    _, r = results
    link = r[("macvtap-init-newlink.txt", "2")]
    assert link["2.2.3.1"].verdict == "not-exercised"  # 6.1's macvlan_common_newlink calls register_netdevice
    assert "never inside" in link["2.2.3.1"].detail


def test_real_ftrace_text_fixtures():
    from callpath.analysis.ftrace_text import parse_function_graph, parse_kprobe_events

    rows, stats = parse_function_graph((FIXTURES / "boot-graph-net_dev_init-6.1.0-56-amd64.txt").read_text())
    assert stats["unmatched_closes"] == 0 and "net_dev_init" in stats["functions"]
    assert rows[0][-1] == "net_dev_init" and rows[0][2] == 0
    text = (FIXTURES / "module-init-macvtap-6.1.0-56-amd64.txt").read_text()
    events = {"cp_p0": ("macvtap_init", 0), "cp_r0": ("macvtap_init", 1)}
    got = parse_kprobe_events(text, events)
    assert [(g[-1], g[2], g[10]) for g in got] == [("macvtap_init", 0, 0), ("macvtap_init", 1, 0)]


def test_real_trace_has_no_defects(results):
    forest, _ = results
    assert forest.unterminated == forest.lost_returns + forest.open_at_end
    assert forest.time_backwards == 0 and forest.time_backwards_first is None
    assert (forest.frames["duration_ns"].dropna() >= 0).all()


def test_real_trace_over_a_document_it_was_not_recorded_for(trace, tmp_path, capsys):
    doc = tmp_path / "bridge.txt"
    doc.write_text("1. br_forward(to, skb, local_rcv, local_orig)\n1.1 __br_forward(to, skb, local_orig)\n"
                   "1.1.1 br_dev_queue_push_xmit(net, sk, skb)\n1.1.1.1 dev_forward_skb(dev, skb)\n")
    out = tmp_path / "r"
    assert main(["report", str(FIXTURE), "--spec", str(doc), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["not_recorded"] == ["br_forward", "__br_forward", "br_dev_queue_push_xmit"]
    (path,) = report["paths"]
    # dev_forward_skb ran many times in this trace (veth, macvlan, ipvlan), never under the bridge:
    # nothing is claimed either way
    assert [s["verdict"] for s in path["steps"]] == ["not-recorded"] * 4
    assert path["summary"]["observed"] == 0 and path["summary"]["checkable"] == 0
    assert "br_forward" in capsys.readouterr().err
