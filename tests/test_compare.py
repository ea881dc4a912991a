"""analysis/compare.py: several per-kernel reports -> one side-by-side report."""

from __future__ import annotations

import copy
import json

from callpath.analysis.compare import compare_reports, release_key, write_comparison


def _fp(name, status="traceable", params=(), ret="int", module="vmlinux", successor=None, symbol=None):
    return {"name": name, "status": status, "symbol": symbol or (name if status != "absent" else None),
            "module": module if status != "absent" else None, "params": list(params), "return_type": ret if status != "absent" else None,
            "successor": successor}


def _report(kernel, plan, verdicts):
    """A report whose one path has a step per verdict given, then one per other planned function."""
    verdicts = list(verdicts) + [(fn, "absent" if fp["status"] == "absent" else "not-exercised")
                                 for fn, fp in plan.items() if fn not in dict(verdicts)]
    steps = [{"number": i, "text": f"{fn}()", "function": fn, "verdict": v} for i, (fn, v) in enumerate(verdicts, 1)]
    observed = sum(v == "observed" for _, v in verdicts)
    return {"kernel": kernel, "where": "lab VM", "events": 10, "plan": plan,
            "fields": {"sk_buff.dev": {"offset": 16, "size": 8, "source": "BTF vmlinux"}},
            "paths": [{"name": "macvlan xmit", "source": "specs/m.txt", "spec": "specs/m.txt", "number": 1,
                       "summary": {"observed": observed, "checkable": len(verdicts)}, "steps": steps}]}


OLD = _report("6.1.0-56-amd64", {
    "macvlan_common_newlink": _fp("macvlan_common_newlink", params=("src_net", "dev", "tb", "data", "extack"), module="macvlan"),
    "macvlan_queue_xmit": _fp("macvlan_queue_xmit", "absent"),
    "netif_rx_ni": _fp("netif_rx_ni", "absent", successor="netif_rx"),
    "veth_xdp_rcv": _fp("veth_xdp_rcv", "clone", symbol="veth_xdp_rcv.constprop.0", params=("rq",)),
    "dev_forward_skb": _fp("dev_forward_skb", params=("dev", "skb")),
}, [("macvlan_common_newlink", "observed"), ("macvlan_queue_xmit", "absent"), ("dev_forward_skb", "observed")])

NEW = _report("6.12.117+deb12-amd64", {
    "macvlan_common_newlink": _fp("macvlan_common_newlink", params=("dev", "params", "extack"), module="macvlan"),
    "macvlan_queue_xmit": _fp("macvlan_queue_xmit", module="macvlan", params=("vlan", "skb")),
    "netif_rx_ni": _fp("netif_rx_ni", "absent", successor="netif_rx"),
    "veth_xdp_rcv": _fp("veth_xdp_rcv", params=("rq",)),
    "dev_forward_skb": _fp("dev_forward_skb", params=("dev", "skb")),
}, [("macvlan_common_newlink", "observed"), ("macvlan_queue_xmit", "observed"), ("dev_forward_skb", "not-exercised")])


def test_release_order_is_natural():
    assert release_key("6.1.0-56-amd64") < release_key("6.12.117+deb12-amd64") < release_key("6.18.1")


def test_drift_kinds_per_function():
    cmp = compare_reports([NEW, OLD])  # any order in: oldest first out
    assert cmp["kernels"] == ["6.1.0-56-amd64", "6.12.117+deb12-amd64"]
    drift = {d["function"]: d for d in cmp["drift"]}
    sig = drift["macvlan_common_newlink"]
    assert sig["kinds"] == ["signature"]
    assert "(src_net, dev, tb, data, extack)" in sig["changes"][0] and "(dev, params, extack)" in sig["changes"][0]
    assert drift["macvlan_queue_xmit"]["kinds"] == ["appeared"]
    assert drift["netif_rx_ni"]["kinds"] == ["absent everywhere"]
    assert "netif_rx" in drift["netif_rx_ni"]["changes"][0]
    assert drift["veth_xdp_rcv"]["kinds"] == ["clone"]
    assert "dev_forward_skb" not in drift  # same on both


def test_vanished_and_renamed_read_in_time_order():
    old = copy.deepcopy(OLD)
    new = copy.deepcopy(NEW)
    old["plan"]["dev_forward_skb"] = _fp("dev_forward_skb")
    new["plan"]["dev_forward_skb"] = _fp("dev_forward_skb", "absent")
    new["plan"]["napi_poll"] = _fp("napi_poll", "absent", successor="__napi_poll")
    old["plan"]["napi_poll"] = _fp("napi_poll")
    for r in (old, new):
        r["paths"][0]["steps"].append({"number": 9, "text": "napi_poll()", "function": "napi_poll", "verdict": "x"})
    # probed for packet tracking, no step of any document: never drift
    new["plan"]["napi_skb_cache_put"] = _fp("napi_skb_cache_put")
    drift = {d["function"]: d for d in compare_reports([old, new])["drift"]}
    assert drift["dev_forward_skb"]["kinds"] == ["vanished"]
    assert drift["napi_poll"]["kinds"] == ["renamed"] and "__napi_poll" in drift["napi_poll"]["changes"][0]
    assert "napi_skb_cache_put" not in drift


def test_inlined_on_one_kernel():
    old = copy.deepcopy(OLD)
    new = copy.deepcopy(NEW)
    new["plan"]["dev_forward_skb"] = dict(_fp("dev_forward_skb", "inlined"), inline_sites=[{"symbol": "veth_xmit"}] * 2)
    drift = {d["function"]: d for d in compare_reports([old, new])["drift"]}
    assert drift["dev_forward_skb"]["kinds"] == ["inlined"]
    assert "inlined (2 sites) on 6.12.117+deb12-amd64" in drift["dev_forward_skb"]["changes"][0]
    assert drift["dev_forward_skb"]["per_kernel"]["6.1.0-56-amd64"]["state"] == "traceable"


def test_verdicts_side_by_side_and_changes_marked(tmp_path):
    cmp = write_comparison([OLD, NEW], tmp_path, ["6.1.0-56-amd64", "6.12.117+deb12-amd64"])
    (path,) = cmp["paths"]
    steps = {s["function"]: s for s in path["steps"]}
    assert steps["macvlan_queue_xmit"]["verdicts"] == {"6.1.0-56-amd64": "absent", "6.12.117+deb12-amd64": "observed"}
    assert steps["macvlan_queue_xmit"]["changed"] and steps["dev_forward_skb"]["changed"]
    assert not steps["macvlan_common_newlink"]["changed"]
    assert cmp["changed_steps"] == 2
    assert path["summary"] == {"6.1.0-56-amd64": "2/5", "6.12.117+deb12-amd64": "2/5"}
    md = (tmp_path / "report-kernels.md").read_text()
    assert "| `macvlan_common_newlink` |" in md and "**signature**" in md
    assert "(6.1.0-56-amd64/report.md)" in md
    assert json.loads((tmp_path / "report-kernels.json").read_text())["kernels"] == cmp["kernels"]


def test_same_kernel_twice_gets_distinct_labels():
    cmp = compare_reports([OLD, copy.deepcopy(OLD)])
    assert cmp["kernels"] == ["6.1.0-56-amd64", "6.1.0-56-amd64#2"]
    assert cmp["drift"] == [d for d in cmp["drift"] if d["kinds"] == ["absent everywhere"]]


# ---------------------------------------------------------------- the CLI and kernel selection
def _trace(tmp_path, kernel, newlink_params):
    from synthetic import EventBuilder, c

    from callpath.analysis.trace import Trace, write_trace

    b = EventBuilder().call("rtnl_newlink", c("macvlan_newlink", c("macvlan_common_newlink")))
    plan = b.plan(absent=["netif_rx_ni"])
    plan["macvlan_common_newlink"]["params"] = list(newlink_params)
    plan["macvlan_common_newlink"]["return_type"] = "int"
    spec = tmp_path / "doc.txt"
    spec.write_text("1. rtnl_newlink()\n   2. macvlan_newlink()\n      3. macvlan_common_newlink()\n"
                    "4. netif_rx_ni()\n")
    meta = {"kernel": kernel, "where": "test", "specs": [str(spec)], "plan": {"functions": plan}, "lost": 0}
    return write_trace(Trace(events=b.events(), meta=meta), tmp_path / kernel / "trace.parquet")


def test_report_several_traces_side_by_side(tmp_path, capsys):
    from callpath.cli import main

    old = _trace(tmp_path, "6.1.0-1-test", ("src_net", "dev", "tb", "data", "extack"))
    new = _trace(tmp_path, "6.12.0-1-test", ("dev", "params", "extack"))
    out = tmp_path / "cmp"
    assert main(["report", str(new.parent), str(old), "--out", str(out), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["kernels"] == ["6.1.0-1-test", "6.12.0-1-test"]
    drift = {d["function"]: d["kinds"] for d in cmp["drift"]}
    assert drift == {"macvlan_common_newlink": ["signature"], "netif_rx_ni": ["absent everywhere"]}
    for k in cmp["kernels"]:
        assert json.loads((out / k / "report.json").read_text())["kernel"] == k
    assert (out / "report-kernels.md").is_file()


def test_choose_kernels_all_named_and_default(monkeypatch, tmp_path):
    from pathlib import Path

    from callpath.probes import labvm

    ks = [labvm.LabKernel("6.12.117+deb12-amd64", Path("/boot/a"), True), labvm.LabKernel("6.5.0-1-amd64", Path("/boot/c"), False),
          labvm.LabKernel("6.1.0-56-amd64", Path("/boot/b"), True)]
    monkeypatch.setattr(labvm, "list_lab_kernels", lambda *a, **k: ks)
    rel = lambda kernels: [k.release for k in kernels]  # noqa: E731
    assert rel(labvm.choose_kernels(["all"])) == ["6.1.0-56-amd64", "6.12.117+deb12-amd64"]  # oldest first, headers only
    assert rel(labvm.choose_kernels(None)) == ["6.12.117+deb12-amd64"]
    assert rel(labvm.choose_kernels(["6.12.117+deb12-amd64", "6.1.0-56-amd64", "6.1.0-56-amd64"])) == [
        "6.1.0-56-amd64", "6.12.117+deb12-amd64"]
    import pytest

    with pytest.raises(labvm.LabError, match="no headers"):
        labvm.choose_kernels(["6.5.0-1-amd64"])
