"""Successors: static discovery from kallsyms + BTF, probing them, and verdicts from their evidence."""

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.outline import parse_outline
from callpath.analysis.report import build_report, render_markdown
from callpath.analysis.trace import Trace
from callpath.probes.btf import BtfFunction, BtfParam
from callpath.probes.kernel import KernelSymbols
from callpath.probes.plan import build_plan, resolve_function
from callpath.probes.successors import derived_names, find_successor

from synthetic import EventBuilder, c

SKB = BtfParam("skb", "struct sk_buff *", 1, "struct sk_buff")

BRIDGE = """\
1. br_forward(to, skb, local_rcv, local_orig)
1.1 __br_forward(to, skb, local_orig)
1.1.1 br_forward_finish(net, sk, skb)
1.1.1.1 br_dev_queue_push_xmit(net, sk, skb)
1.1.1.1.1 dev_queue_xmit(skb)
"""


class FakeBtf:
    """Only FUNC records with code of their own: no inlined-only functions."""

    def __init__(self, names):
        self.funcs = {n: BtfFunction(n, (SKB,), "int", "vmlinux") for n in names}

    def function(self, name):
        return self.funcs.get(name)


def kernel_6_1():
    """Shaped like Debian 6.1: dev_queue_xmit is a header inline wrapper whose out-of-line
    copy is in kallsyms but notrace; __dev_queue_xmit is the traceable implementation."""
    text = {n: "bridge" for n in ("br_forward", "__br_forward", "br_forward_finish", "br_dev_queue_push_xmit")}
    text.update({"dev_queue_xmit": "vmlinux", "__dev_queue_xmit": "vmlinux", "netif_rx": "vmlinux",
                 "__class_register": "vmlinux", "__napi_poll.constprop.0": "vmlinux"})
    traceable = set(text) - {"dev_queue_xmit"}
    return KernelSymbols(release="6.1-test", text=text, clones={"__napi_poll": ["__napi_poll.constprop.0"]},
                         traceable=traceable, traceable_known=True)


def test_derived_names():
    assert derived_names("dev_queue_xmit")[0] == "__dev_queue_xmit"
    assert derived_names("__foo")[0] == "foo"
    assert "dev_queue_xmit" not in derived_names("dev_queue_xmit")


def test_wrapper_successor_from_kallsyms_and_btf():
    s = kernel_6_1()
    btf = FakeBtf(["__dev_queue_xmit", "dev_queue_xmit"])
    succ = find_successor("dev_queue_xmit", s, btf)
    assert succ.name == "__dev_queue_xmit" and succ.symbol == "__dev_queue_xmit" and succ.source == "derived"
    assert succ.in_btf is True and "BTF FUNC" in succ.reason and "traceable" in succ.reason
    # the same candidate without a BTF record is still a symbol with code, and said so
    assert "no BTF FUNC record" in find_successor("dev_queue_xmit", s, FakeBtf([])).reason
    fp = resolve_function("dev_queue_xmit", s, btf)
    assert fp.status == "not-traceable" and fp.successor == "__dev_queue_xmit"


def test_successor_must_be_attachable():
    s = kernel_6_1()
    s.traceable.discard("__dev_queue_xmit")  # exists, but ftrace cannot attach either
    assert find_successor("dev_queue_xmit", s) is None
    s.blacklist.add("netif_rx")
    assert find_successor("netif_rx_ni", s) is None  # the cited fact alone decides nothing


def test_cited_fact_clone_and_nothing_found():
    s = kernel_6_1()
    fact = find_successor("netif_rx_ni", s)
    assert fact.name == "netif_rx" and fact.source == "fact" and "v5.18" in fact.reason
    clone = find_successor("napi_poll", s)
    assert clone.name == "__napi_poll" and clone.symbol == "__napi_poll.constprop.0"
    gone = resolve_function("macvlan_queue_xmit", s, FakeBtf([]))
    assert gone.status == "absent" and gone.successor is None
    assert "inlined" in gone.reason and "cannot be told apart" in gone.reason and "BTF" in gone.reason


def test_plan_probes_successor_after_documented_functions():
    spec = parse_outline(BRIDGE, "bridge.txt")
    plan = build_plan([spec], kernel_6_1(), FakeBtf(["__dev_queue_xmit", "dev_queue_xmit"]))
    doc = plan.functions["dev_queue_xmit"]
    assert doc.status == "not-traceable" and doc.func_id is None and doc.successor == "__dev_queue_xmit"
    succ = plan.functions["__dev_queue_xmit"]
    assert succ.successor_of == "dev_queue_xmit" and succ.func_id == 4  # after the four documented ones
    assert succ.skb_arg == 1 and "successor of dev_queue_xmit" in succ.reason
    again = type(plan).from_dict(plan.to_dict())
    assert again.functions["__dev_queue_xmit"].successor_of == "dev_queue_xmit"
    # no slot left: documented functions keep theirs, the successor is skipped
    small = build_plan([spec], kernel_6_1(), None, max_funcs=4)
    assert small.functions["__dev_queue_xmit"].func_id is None and small.skipped == ["__dev_queue_xmit"]


def bridge_trace(calls=3):
    b = EventBuilder()
    for _ in range(calls):
        b.call("br_forward", c("__br_forward", c("br_forward_finish", c("br_dev_queue_push_xmit",
                                                                       c("__dev_queue_xmit")))), skb=0x10)
    b.call("__dev_queue_xmit")  # outside the bridge: must not count
    return b


def bridge_verdicts(b, **plan_kw):
    spec = parse_outline(BRIDGE, "bridge.txt")
    plan = b.plan(**plan_kw)
    ((_, (path, *_)),) = check_specs([spec], build_forest(b.events()), plan)
    return path, {s.number: s for s in path.steps}


def test_successor_observed_where_documented():
    path, v = bridge_verdicts(bridge_trace(), not_traceable=["dev_queue_xmit"],
                              successors={"dev_queue_xmit": "__dev_queue_xmit"})
    s = v["1.1.1.1.1"]
    assert s.verdict == "successor-observed" and s.count == 3 and s.successor == "__dev_queue_xmit"
    assert s.evidence[-2:] == ["br_dev_queue_push_xmit", "__dev_queue_xmit"]
    assert "`dev_queue_xmit` is not traceable here" in s.detail
    assert "successor `__dev_queue_xmit` observed 3× inside br_forward > __br_forward > br_forward_finish > " \
           "br_dev_queue_push_xmit" in s.detail
    assert path.observed == 5 and path.checkable == 5


def test_successor_probed_but_not_seen():
    b = EventBuilder()
    b.call("br_forward", c("__br_forward", c("br_forward_finish", c("br_dev_queue_push_xmit"))))
    b.call("__dev_queue_xmit")  # ran, but not from the bridge
    _, v = bridge_verdicts(b, not_traceable=["dev_queue_xmit"], successors={"dev_queue_xmit": "__dev_queue_xmit"})
    s = v["1.1.1.1.1"]
    assert s.verdict == "not-exercised" and s.successor == "__dev_queue_xmit"
    assert "successor `__dev_queue_xmit` recorded, ran 1 times, never inside" in s.detail


def test_successor_named_but_not_recorded_stays_a_kernel_fact():
    b = bridge_trace()
    plan = b.plan(absent=["dev_queue_xmit"], omit=["__dev_queue_xmit"])
    plan["dev_queue_xmit"]["successor"] = "__dev_queue_xmit"
    spec = parse_outline(BRIDGE, "bridge.txt")
    ((_, (path, *_)),) = check_specs([spec], build_forest(b.events()), plan)
    s = path.steps[-1]
    assert s.verdict == "absent" and "`__dev_queue_xmit` exists but was not recorded" in s.detail


def test_successor_stands_in_for_an_unprobeable_caller():
    # napi_poll (absent) -> veth_poll: veth_poll must sit inside napi_poll's successor
    doc = "1. net_rx_action()\n1.1 napi_poll(n, repoll)\n1.1.1 veth_poll(napi, budget)\n"
    b = EventBuilder()
    b.call("net_rx_action", c("__napi_poll", c("veth_poll")))
    b.call("net_rx_action", c("veth_poll"))  # not inside __napi_poll: does not count
    spec = parse_outline(doc, "napi.txt")
    ((_, (path, *_)),) = check_specs([spec], build_forest(b.events()),
                                     b.plan(absent=["napi_poll"], successors={"napi_poll": "__napi_poll"}))
    v = {s.number: s for s in path.steps}
    assert v["1.1"].verdict == "successor-observed" and v["1.1"].count == 1
    assert v["1.1.1"].verdict == "observed" and v["1.1.1"].count == 1
    assert v["1.1.1"].expected_chain == ["net_rx_action", "__napi_poll", "veth_poll"]


def test_report_counts_successor_as_observed():
    b = bridge_trace()
    plan = b.plan(not_traceable=["dev_queue_xmit"], successors={"dev_queue_xmit": "__dev_queue_xmit"})
    rep = build_report(Trace(events=b.events(), meta={"kernel": "t", "plan": {"functions": plan}}),
                       [parse_outline(BRIDGE, "bridge.txt")])
    p = rep["paths"][0]
    assert p["summary"]["observed"] == 5 and p["summary"]["verdicts"]["successor-observed"] == 1
    assert "successor-observed" in rep["verdict_vocabulary"] and "not-recorded" in rep["verdict_vocabulary"]
    md = render_markdown(rep)
    assert "| via successor |" in md and "**successor-observed**" in md
