"""The outline reader on every outline document shipped in specs/ (the user's seeds, text unchanged)."""

from pathlib import Path

import pytest

from callpath.analysis.calltext import parse_step_text
from callpath.analysis.outline import parse_outline
from callpath.analysis.readers import read_spec
from callpath.analysis.spec import SpecError

SPECS = Path(__file__).resolve().parent.parent / "specs"
IPVLAN = SPECS / "ipvlan-ipvtap-newlink-l3-xmit.txt"
MACVLAN = SPECS / "macvlan-newlink-xmit.txt"
MACVTAP = SPECS / "macvtap-init-newlink.txt"
NETDEV = SPECS / "net-dev-init-boot.txt"


def test_specs_are_the_seeds_unchanged():
    seeds = Path(__file__).resolve().parents[2] / "shared" / "seeds"
    if not seeds.exists():
        pytest.skip("../shared/seeds not beside the checkout")
    pairs = {"000_18f3f79bca4f2dcd.txt": IPVLAN, "001_01d9e5dd37c18fcb.txt": MACVLAN,
             "002_d749ce7d6fed1e64.txt": MACVTAP, "003_7e1cfe7a28803618.txt": NETDEV,
             "004_c740d6ac468522b6.txt": SPECS / "veth-macvlan-notes.md"}
    for seed, ours in pairs.items():
        assert (seeds / seed).read_bytes() == ours.read_bytes(), seed


def test_ipvlan_paths_and_chains():
    spec = read_spec(IPVLAN)
    assert [p.number for p in spec.paths] == ["1", "2"]  # section 0 (diagrams) skipped
    link, xmit = spec.paths
    s = link.step("1.1.1.1")
    assert s.chain == ["ipvtap_setup", "ipvlan_link_setup"] and s.labels == ["setup"]
    assert link.step("1.2").labels == ["ops->newlink"] and link.step("1.2").chain == ["ipvtap_newlink"]
    s = link.step("1.2.1.4")
    assert s.chain == ["register_netdevice", "ipvlan_init"] and s.labels == ["netdev_ops->ndo_init"]
    assert link.step("1.2.1.4.1").parent == "1.2.1.4"
    assert link.step("1.1").result == "dev" and link.step("1.1").function == "rtnl_create_link"
    assert link.step("1.2.1.2").kind == "statement"          # ipvlan->phy_dev = phy_dev
    assert link.step("1.2.1.3").statement_kind == "builtin"  # memcpy(...)
    assert link.step("1.2.1.5").remark == "port is created in ipvlan_init()"
    assert xmit.step("2").chain == ["ipvlan_start_xmit", "ipvlan_queue_xmit"]
    assert xmit.step("2.1.3").condition == "if addr"
    assert xmit.step("2.1.3.1").chain == ["dev_forward_skb", "netif_rx_internal"]
    assert xmit.step("2.1.5.3").condition == "if it is an IP packet"
    assert xmit.step("2.1.5.3").line == 60  # file:line of the step


def test_macvlan_branches_and_statements():
    spec = read_spec(MACVLAN)
    xmit = spec.paths[2]
    assert xmit.name == "macvlan_start_xmit(skb, dev)" and xmit.source.endswith(":33")
    assert xmit.step("3.1.1").branch == "A: broadcast"
    assert xmit.step("3.1.2").branch == "B: unicast"
    s = xmit.step("3.1.4")
    assert s.kind == "statement" and s.branch == "C: out side"
    assert xmit.step("3.1.1.3").function == "netif_rx_ni"
    assert xmit.step("3.1.1.3").remark == "recieve skb on nskb->dev"  # the user's typo kept
    assert spec.paths[1].step("2.3").condition == "if (!netif_is_macvlan_port(lowerdev))"


def test_macvtap_declaration_with_call():
    spec = read_spec(MACVTAP)
    s = spec.paths[1].step("2.2.1")
    assert s.function == "netdev_priv" and s.result == "vlantap"
    assert [c.number for c in spec.paths[1].children("2.2")] == ["2.2.1", "2.2.2", "2.2.3"]


def test_net_dev_init_comments_macros_and_loops():
    spec = read_spec(NETDEV)
    (path,) = spec.paths
    root = path.step("1")
    assert root.remark == "init net subsystem"
    assert "static int __init net_dev_init(void)" in root.notes
    assert any(n.startswith("; this function") for n in root.notes)
    assert path.step("1.3").statement_kind == "macro"      # INIT_LIST_HEAD
    assert path.step("1.6").statement_kind == "loop"       # for_each_possible_cpu(i)
    assert path.step("1.6.2").kind == "statement"          # sd = &per_cpu(...)
    assert path.step("1.2.2").function == "class_register"  # "return class_register(...)"
    assert path.step("1.10").function == "open_softirq"
    assert path.step("1.1.1.1").remark == "/proc/$$/net/dev"


@pytest.mark.parametrize(
    "text, chain, kind",
    [
        ("dev = rtnl_create_link(, , macvtap_link_ops )", ["rtnl_create_link"], "call"),
        ("skb->dev = ipvlan->phy_dev, set to phy_dev to deliver out", [], "statement"),
        ("setup() -> macvtap_setup()", ["macvtap_setup"], "call"),
        ("proc_create_net(\"dev\"), /proc/$$/net/dev", ["proc_create_net"], "call"),
        ("lowerdev = __dev_get_by_index(src_net, nla_get_u32(tb[IFLA_LINK]))", ["__dev_get_by_index"], "call"),
        ("INIT_WORK(per_cpu_ptr(&flush_works,i), flush_backlog)", [], "statement"),
        ("sd->backlog.poll = process_backlog", [], "statement"),
        ("foo(unbalanced, (paren", ["foo"], "call"),
    ],
)
def test_step_text(text, chain, kind):
    p = parse_step_text(text)
    assert p.chain == chain and p.kind == kind


def test_missing_parent_warns_and_attaches_to_ancestor():
    spec = parse_outline("1. a_fn()\n1.1 b_fn()\n1.1.1.1 c_fn()\n", "x.txt")
    s = spec.paths[0].step("1.1.1.1")
    assert s.parent == "1.1"
    assert spec.warnings and spec.warnings[0].startswith("x.txt:3:")


@pytest.mark.parametrize(
    "data, where",
    [(b"", "x.txt:1: the document is empty"), (b"1. a()\n\x00\x01", "x.txt:2: binary"),
     (b"1. a()\n1.1 b(\xff)\n", "x.txt:2: not UTF-8"), (b"just words\nno steps\n", "x.txt:1:")],
)
def test_bad_input_is_one_line_error(tmp_path, data, where):
    f = tmp_path / "x.txt"
    f.write_bytes(data)
    with pytest.raises(SpecError) as err:
        read_spec(f)
    msg = str(err.value)
    assert "\n" not in msg and msg.replace(str(tmp_path) + "/", "").startswith(where)


def test_section_numbered_twice_keeps_paths_apart():
    # found by hypothesis: a step of the first "1." must not take a parent from the second
    spec = parse_outline("1.0 memcpy(a, b, 6)\n1. memcpy(a, b, 6)\n2. f_x()\n1.0 g_y()\n", "t.txt")
    for p in spec.paths:
        numbers = {s.number for s in p.steps}
        assert all(s.parent is None or s.parent in numbers for s in p.steps)
    assert any("numbered twice" in w for w in spec.warnings)


def test_numbering_gaps_and_backwards_are_warnings_with_a_best_reading():
    spec = parse_outline("1. a_fn()\n1.1 b_fn()\n1.3 c_fn()\n1.2 d_fn()\n", "n.txt")
    (path,) = spec.paths
    assert [s.number for s in path.steps] == ["1", "1.1", "1.3", "1.2"]  # document order kept
    assert all(s.parent == "1" for s in path.steps[1:])
    assert spec.warnings == ["n.txt:3: step 1.3 skips 1.2 (numbering has a gap)",
                             "n.txt:4: step 1.2 comes after 1.3: numbering goes backwards; read in document order"]


def test_hundred_thousand_line_document():
    lines = ["1. root_fn(skb)"] + [f"1.{i} callee_{i}(skb, dev), if x " for i in range(1, 100_000)]
    spec = parse_outline("\n".join(lines), "big.txt")
    (path,) = spec.paths
    assert len(path.steps) == 100_000 and not spec.warnings
    assert path.steps[-1].number == "1.99999" and path.steps[-1].parent == "1"
    assert path.steps[-1].line == 100_000
