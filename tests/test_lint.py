"""callpath lint: statuses, argument names against BTF, exit status (synthetic kernel facts)."""

import json

import pytest

from callpath.analysis.outline import parse_outline
from callpath.cli import main
from callpath.probes import kernel
from callpath.probes.btf import BtfFunction, BtfParam
from callpath.probes.kernel import KernelSymbols
from callpath.probes.lint import compare_arguments, lint, render_text
from callpath.probes.plan import build_plan

DOC = """\
1. ipvlan_link_new(src_net, dev, )
1.1 netif_rx_ni(skb)
1.2 net_dev_init()
1.3 foo_clone(a)
1.4 skb->dev = x
1.5 gone_fn(a, b, c)
"""


def p(name, target="int", depth=0):
    return BtfParam(name, target + " *" * depth, depth, target)


class FakeBtf:
    funcs = {
        "ipvlan_link_new": BtfFunction("ipvlan_link_new", (p("dev", "struct net_device", 1), p("params", "struct rtnl_newlink_params", 1),
                                                           p("extack", "struct netlink_ext_ack", 1)), "int", "ipvlan"),
        "macvtap_init": BtfFunction("macvtap_init", (), "int", "macvtap"),
    }

    def function(self, name):
        return self.funcs.get(name)


@pytest.fixture
def result():
    syms = KernelSymbols(release="test-1", text={"ipvlan_link_new": "ipvlan", "netif_rx": "vmlinux",
                                                 "net_dev_init": "vmlinux", "foo_clone.isra.0": "vmlinux"},
                         clones={"foo_clone": ["foo_clone.isra.0"]},
                         traceable={"ipvlan_link_new", "netif_rx", "foo_clone.isra.0"}, traceable_known=True,
                         init_text={"net_dev_init"})
    spec = parse_outline(DOC, "doc.txt")
    plan = build_plan([spec], syms, FakeBtf())
    return lint([spec], plan, True)


def test_statuses(result):
    (doc,) = result["documents"]
    st = {f["function"]: f for f in doc["functions"]}
    assert st["ipvlan_link_new"]["status"] == "traceable"
    assert st["netif_rx_ni"]["status"] == "absent" and st["netif_rx_ni"]["successor"] == "netif_rx"
    assert st["net_dev_init"]["status"] == "boot-only"
    assert st["foo_clone"]["status"] == "clone" and st["foo_clone"]["symbol"] == "foo_clone.isra.0"
    assert st["gone_fn"]["status"] == "absent" and st["gone_fn"]["successor"] is None
    assert "skb" not in st  # a statement is never linted as a function
    assert doc["counts"] == {"traceable": 1, "clone": 1, "inlined": 0, "boot-only": 1, "not-traceable": 0, "module-not-loaded": 0,
                             "absent": 2, "present": 0}
    assert result["absent"] == 2


def test_argument_names_against_btf(result):
    st = {f["function"]: f for f in result["documents"][0]["functions"]}
    mm = st["ipvlan_link_new"]["mismatches"]
    # the document writes (src_net, dev, ); the kernel's are (dev, params, extack)
    assert [(m["position"], m["documented"], m["kernel"]) for m in mm] == [(1, "src_net", "dev"), (2, "dev", "params")]
    text = render_text(result)
    assert "argument 1 written 'src_net', kernel names it 'dev'" in text


def test_compare_arguments_rules():
    assert compare_arguments(["skb", "", "&x", "0", "dev"], ["skb", "a", "b", "c", "ndev"]) == [(5, "dev", "ndev")]
    assert compare_arguments(["a", "b"], ["a"]) == [(2, "b", None)]
    assert compare_arguments([], ["a"]) == []


def test_module_init_is_boot_only():
    syms = KernelSymbols(release="t", text={}, traceable=set(), traceable_known=True)
    spec = parse_outline("1. macvtap_init()\n", "m.txt")
    plan = build_plan([spec], syms, FakeBtf())
    fp = plan.functions["macvtap_init"]
    assert fp.boot_only and fp.module == "macvtap" and "module init" in fp.reason


def test_lint_cli_on_this_kernel(capsys):
    """The running kernel: every function gets one status; exit 1 because some are absent."""
    try:
        kernel.read_kallsyms()
    except kernel.KernelAccessError:
        pytest.skip("kallsyms unreadable")
    rc = main(["lint", "--json", "specs/macvlan-newlink-xmit.txt"])
    out = json.loads(capsys.readouterr().out)
    (doc,) = out["documents"]
    names = [f["function"] for f in doc["functions"]]
    assert len(names) == len(set(names)) and "macvlan_start_xmit" in names
    assert {f["status"] for f in doc["functions"]} <= {"traceable", "clone", "boot-only", "not-traceable",
                                                       "module-not-loaded", "absent", "present"}
    assert all(f["module"] for f in doc["functions"] if f["status"] != "absent")  # every function's module named
    st = {f["function"]: f for f in doc["functions"]}
    assert st["netif_rx_ni"]["status"] == "absent"  # removed in v5.18: absent on any current kernel
    assert rc == 1


def test_lint_names_modules_and_which_are_not_loaded():
    """A function of a module that is not loaded: its own status, the module named, the fix given; not absent."""
    from callpath.probes.modindex import ModuleIndex

    index = ModuleIndex(release="t")
    index.add("bridge", "kernel/net/bridge/bridge.ko", ["br_handle_frame", "br_forward"])
    index.add("veth", "kernel/drivers/net/veth.ko", ["veth_xmit"])
    syms = KernelSymbols(release="t", text={"veth_xmit": "veth", "netif_rx": "vmlinux"},
                         traceable={"veth_xmit", "netif_rx"}, traceable_known=True)
    spec = parse_outline("1. br_handle_frame(skb)\n1.1 br_forward(a)\n2. veth_xmit(skb, dev)\n2.1 netif_rx(skb)\n",
                         "b.txt")
    result = lint([spec], build_plan([spec], syms, index=index), True)
    st = {f["function"]: f for f in result["documents"][0]["functions"]}
    assert st["br_handle_frame"]["status"] == "module-not-loaded"
    assert (st["br_forward"]["module"], st["br_forward"]["module_loaded"]) == ("bridge", False)
    assert (st["veth_xmit"]["module"], st["veth_xmit"]["module_loaded"]) == ("veth", True)
    assert (st["netif_rx"]["module"], st["netif_rx"]["module_loaded"]) == ("vmlinux", None)
    assert result["absent"] == 0 and result["modules_not_loaded"] == {"bridge": ["br_handle_frame", "br_forward"]}
    text = render_text(result)
    assert "br_forward [bridge, not loaded]" in text and "veth_xmit [veth, loaded]" in text
    assert "module bridge is not loaded" in text and "modprobe bridge" in text
