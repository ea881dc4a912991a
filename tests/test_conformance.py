"""Matching documented steps against call trees: verdicts, evidence, order."""

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.outline import parse_outline

from synthetic import EventBuilder, c

DOC = """\
3. macvlan_start_xmit(skb, dev)
================
3.1 macvlan_queue_xmit(skb, dev)
================
3.1.1 macvlan_broadcast(skb, port, dev, MACVLAN_MODE_BRIDGE), A: broadcast
3.1.1.1 nskb = skb_clone(skb, GFP_ATOMIC)
3.1.1.3 netif_rx_ni(nskb), recieve skb on nskb->dev
3.1.2 macvlan_hash_lookup(port, eth->h_dest), B: unicast
3.1.3 dev_forward_skb(vlan->lowerdev, skb)
3.1.4 skb->dev = vlan->lowerdev, C: out side
3.1.5 dev_queue_xmit_accel(skb, NULL), send skb through skb->dev
"""


def verdicts(doc, builder, **plan_kw):
    spec = parse_outline(doc, "doc.txt")
    forest = build_forest(builder.events())
    ((_, (path, *_)),) = check_specs([spec], forest, builder.plan(**plan_kw))
    return {s.number: s for s in path.steps}


def macvlan_like():
    b = EventBuilder()
    # unicast: start_xmit > (queue_xmit inlined) > hash_lookup, then dev_forward_skb
    for _ in range(3):
        b.call("macvlan_start_xmit", c("macvlan_hash_lookup"), c("dev_forward_skb"), skb=0x10)
    # broadcast: skb_clone happens inside macvlan_broadcast, then out-side xmit
    b.call("macvlan_start_xmit", c("macvlan_broadcast", c("skb_clone")), c("dev_queue_xmit_accel"), skb=0x20)
    # dev_forward_skb also runs outside macvlan (e.g. veth): must not count
    b.call("dev_forward_skb")
    return b


def test_verdicts_and_counts():
    v = verdicts(DOC, macvlan_like(), absent=["macvlan_queue_xmit", "netif_rx_ni"])
    assert v["3"].verdict == "observed" and v["3"].count == 4
    assert v["3.1"].verdict == "absent"
    # matched inside the nearest probed ancestor, since 3.1 is inlined
    assert v["3.1.2"].verdict == "observed" and v["3.1.2"].count == 3
    assert v["3.1.2"].evidence == ["macvlan_start_xmit", "macvlan_hash_lookup"]
    assert v["3.1.3"].count == 3  # the 4th dev_forward_skb was outside macvlan_start_xmit
    assert v["3.1.1.1"].verdict == "observed"
    assert v["3.1.1.1"].expected_chain == ["macvlan_start_xmit", "macvlan_broadcast", "skb_clone"]
    assert v["3.1.1.3"].verdict == "absent"
    assert v["3.1.4"].verdict == "not-a-call"
    assert v["3.1.5"].verdict == "observed"


def test_not_exercised_says_why():
    b = EventBuilder()
    b.call("macvlan_start_xmit", c("macvlan_hash_lookup"))
    b.call("dev_queue_xmit_accel")  # ran, but not from macvlan_start_xmit
    # macvlan_broadcast: probed, never called
    v = verdicts(DOC, b, absent=["macvlan_queue_xmit", "netif_rx_ni"], probed=["macvlan_broadcast"])
    assert v["3.1.5"].verdict == "not-exercised" and "never inside macvlan_start_xmit" in v["3.1.5"].detail
    assert v["3.1.1"].verdict == "not-exercised" and v["3.1.1"].detail == "never ran in this run"
    # skb_clone is documented under macvlan_broadcast, which never ran
    v = verdicts(DOC, b, absent=["macvlan_queue_xmit", "netif_rx_ni"], probed=["macvlan_broadcast", "skb_clone"])
    assert v["3.1.1.1"].detail == "caller macvlan_broadcast never ran in this run"


def test_out_of_order_siblings():
    doc = "1. parent_fn()\n1.1 first_fn()\n1.2 second_fn()\n"
    b = EventBuilder()
    for _ in range(2):
        b.call("parent_fn", c("second_fn"), c("first_fn"))
    v = verdicts(doc, b)
    assert v["1.1"].verdict == "observed"
    assert v["1.2"].verdict == "observed-out-of-order" and v["1.2"].out_of_order == 2

    b = EventBuilder()
    b.call("parent_fn", c("first_fn"), c("second_fn"))
    v = verdicts(doc, b)
    assert v["1.2"].verdict == "observed" and v["1.2"].in_order == 1


def test_repeated_function_among_siblings_is_not_out_of_order():
    # veth_newlink: register_netdevice (peer), rtnl_configure_link (peer), register_netdevice (dev)
    doc = "1. veth_newlink()\n1.1 register_netdevice()\n1.2 rtnl_configure_link()\n1.3 register_netdevice()\n"
    b = EventBuilder()
    b.call("veth_newlink", c("register_netdevice"), c("rtnl_configure_link"), c("register_netdevice"))
    v = verdicts(doc, b)
    assert [v[n].verdict for n in ("1.1", "1.2", "1.3")] == ["observed"] * 3


def test_chain_restating_its_caller():
    # 1.1.1.1 setup() -> ipvtap_setup() -> ipvlan_link_setup(dev), then 1.1.1.1.1 ipvlan_link_setup()
    doc = ("1. alloc_netdev_mqs()\n1.1 setup() -> ipvtap_setup() -> ipvlan_link_setup(dev)\n"
           "1.1.1 ipvlan_link_setup()\n")
    b = EventBuilder()
    b.call("alloc_netdev_mqs", c("ipvtap_setup", c("ipvlan_link_setup")))
    v = verdicts(doc, b)
    assert v["1.1"].verdict == "observed" and v["1.1"].expected_chain == ["alloc_netdev_mqs", "ipvtap_setup", "ipvlan_link_setup"]
    assert v["1.1.1"].verdict == "observed" and v["1.1.1"].count == 1


def test_wrong_nesting_is_not_observed():
    doc = "1. outer_fn()\n1.1 inner_fn()\n"
    b = EventBuilder()
    b.call("inner_fn", c("outer_fn"))  # nested the other way round
    v = verdicts(doc, b)
    assert v["1.1"].verdict == "not-exercised"


def test_not_traceable():
    doc = "1. outer_fn()\n1.1 hidden_fn()\n"
    b = EventBuilder()
    b.call("outer_fn")
    v = verdicts(doc, b, not_traceable=["hidden_fn"])
    assert v["1.1"].verdict == "not-traceable" and v["1.1"].detail == "notrace"
