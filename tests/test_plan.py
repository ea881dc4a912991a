"""Probe plan resolution against synthetic kernel symbol tables (no root needed)."""

from callpath.analysis.outline import parse_outline
from callpath.probes.btf import BtfFunction, BtfParam
from callpath.probes.kernel import KernelSymbols, read_kallsyms
from callpath.probes.plan import build_plan, resolve_function


def syms(text, traceable, clones=None, blacklist=()):
    return KernelSymbols(release="test", text=text, clones=clones or {}, traceable=set(traceable),
                         traceable_known=True, blacklist=set(blacklist))


def test_statuses():
    s = syms({"a_fn": "vmlinux", "b_fn": "vmlinux", "netif_rx": "vmlinux", "c_fn.isra.0": "macvlan",
              "d_fn.constprop.0": "vmlinux", "e_fn": "vmlinux"},
             traceable={"a_fn", "netif_rx", "c_fn.isra.0", "e_fn"},
             clones={"c_fn": ["c_fn.isra.0"], "d_fn": ["d_fn.constprop.0"]}, blacklist={"e_fn"})
    assert resolve_function("a_fn", s).status == "traceable"
    nt = resolve_function("b_fn", s)
    assert nt.status == "not-traceable" and "available_filter_functions" in nt.reason
    c = resolve_function("c_fn", s)
    assert c.status == "clone" and c.symbol == "c_fn.isra.0" and c.module == "macvlan"
    assert resolve_function("d_fn", s).status == "not-traceable"  # clone exists, none traceable
    assert "blacklist" in resolve_function("e_fn", s).reason
    gone = resolve_function("netif_rx_ni", s)
    assert gone.status == "absent" and gone.successor == "netif_rx" and "v5.18" in gone.reason
    inl = resolve_function("macvlan_queue_xmit", s)
    assert inl.status == "absent" and inl.successor is None and "inlined" in inl.reason


def test_build_plan_slots_btf_and_clone_arguments():
    spec = parse_outline("1. a_fn(skb)\n1.1 c_fn(skb)\n1.2 b_fn()\n1.3 skb->dev = x\n1.4 a_fn()\n", "t.txt")
    s = syms({"a_fn": "vmlinux", "b_fn": "vmlinux", "c_fn.isra.0": "vmlinux"},
             traceable={"a_fn", "b_fn", "c_fn.isra.0"}, clones={"c_fn": ["c_fn.isra.0"]})
    skb = BtfParam("skb", "struct sk_buff *", 1, "struct sk_buff")
    nlh = BtfParam("nlh", "struct nlmsghdr *", 1, "struct nlmsghdr")

    class FakeBtf:
        funcs = {"a_fn": BtfFunction("a_fn", (skb,), "int", "vmlinux"),
                 "c_fn": BtfFunction("c_fn", (skb,), "void", "vmlinux"),
                 "b_fn": BtfFunction("b_fn", (skb, nlh), "int", "vmlinux")}

        def function(self, name):
            return self.funcs.get(name)

    plan = build_plan([spec], s, FakeBtf())
    assert [f.name for f in plan.probed()] == ["a_fn", "c_fn", "b_fn"]  # document order, no repeats
    assert [f.func_id for f in plan.probed()] == [0, 1, 2]
    assert plan.functions["a_fn"].skb_arg == 1 and plan.functions["a_fn"].return_type == "int"
    assert plan.functions["c_fn"].skb_arg is None  # a clone's registers are not trusted
    assert plan.functions["b_fn"].netlink
    # the plan survives its JSON form
    again = type(plan).from_dict(plan.to_dict())
    assert again.functions["c_fn"].symbol == "c_fn.isra.0" and again.probed()[2].name == "b_fn"


def test_slots_run_out():
    spec = parse_outline("1. f0()\n" + "".join(f"1.{i} f{i}()\n" for i in range(1, 6)), "t.txt")
    s = syms({f"f{i}": "vmlinux" for i in range(6)}, traceable={f"f{i}" for i in range(6)})
    plan = build_plan([spec], s, None, max_funcs=4)
    assert len(plan.probed()) == 4 and plan.skipped == ["f4", "f5"]


def test_read_kallsyms(tmp_path):
    f = tmp_path / "kallsyms"
    f.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffffc1001000 t macvlan_start_xmit\t[macvlan]\n"
        "ffffffff81002000 t netif_rx_internal.isra.0\n"
        "ffffffff81003000 d some_data\n"
        "ffffffff83000000 T _sinittext\n"
        "ffffffff83000100 t net_dev_init\n"
        "ffffffff83100000 T _einittext\n"
        "ffffffff83200000 t after_init_text\n"
    )
    text, clones, init_text = read_kallsyms(str(f))
    assert init_text == {"net_dev_init"}
    assert text["macvlan_start_xmit"] == "macvlan" and text["_stext"] == "vmlinux"
    assert "some_data" not in text
    assert clones == {"netif_rx_internal": ["netif_rx_internal.isra.0"]}
