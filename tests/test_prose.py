"""The Markdown prose reader on the veth/macvlan notes (specs/veth-macvlan-notes.md, the user's text)."""

from pathlib import Path

import pytest

from callpath.analysis.prose import parse_prose
from callpath.analysis.readers import read_spec
from callpath.analysis.spec import SpecError

NOTES = Path(__file__).resolve().parent.parent / "specs" / "veth-macvlan-notes.md"


@pytest.fixture(scope="module")
def spec():
    return read_spec(NOTES)


def by_function(path):
    return {s.function: s for s in path.steps if s.function}


def test_reads_as_prose_with_paths(spec):
    assert spec.format == "prose"
    assert len(spec.paths) == 6


def test_link_creation_path_keeps_command_and_order(spec):
    p = spec.paths[0]
    assert p.trigger == "ip link add ve-host type veth peer name ve-guest"
    root = p.steps[0]
    assert root.kind == "statement" and root.statement_kind == "command"
    f = by_function(p)
    assert f["veth_setup"].parent == root.number and f["veth_newlink"].parent == root.number
    kids = [s.function for s in p.children(f["veth_newlink"].number)]
    # "it creates the peer first": the peer's steps come before the dev's own
    assert kids == ["rtnl_create_link", "register_netdevice", "rtnl_configure_link", "register_netdevice", "veth_init_queues"]
    assert "it is handled by `veth_link_ops`" in root.notes  # an ops table is not a function


def test_called_by_reverses_the_edge(spec):
    p = spec.paths[1]
    assert p.steps[0].function == "dev_hard_start_xmit"
    xmit = by_function(p)["veth_xmit"]
    assert xmit.parent == p.steps[0].number
    fwd = by_function(p)["veth_forward_skb"]
    assert fwd.parent == xmit.number
    assert by_function(p)["__netif_rx"].parent == fwd.number


def test_alternatives_are_branches(spec):
    p = spec.paths[2]
    f = by_function(p)
    assert f["napi_gro_receive"].parent == f["netif_receive_skb"].parent == f["veth_xdp_rcv"].number
    assert f["napi_gro_receive"].branch.startswith("A") and f["netif_receive_skb"].branch.startswith("B")


def test_return_values_and_conditions(spec):
    p = spec.paths[5]
    h = by_function(p)["macvlan_handle_frame"]
    assert h.expected_returns == ["RX_HANDLER_PASS", "RX_HANDLER_ANOTHER"]
    xmit = by_function(spec.paths[4])
    assert xmit["dev_forward_skb"].condition == "if the dst is another macvlan"
    assert xmit["dev_queue_xmit_accel"].condition == "otherwise"


def test_members_and_types_are_notes_not_steps(spec):
    names = {s.function for p in spec.paths for s in p.steps}
    assert not names & {"vlan", "net_device", "peer", "eth0", "macvlan_link_ops"}
    assert any("in other word" in n for n in spec.notes)


def test_prose_without_functions_is_an_error():
    with pytest.raises(SpecError, match="no bullet names a kernel function"):
        parse_prose("# t\n\n## s\n\n- just words\n", "n.md")


def test_more_relations_and_notes():
    doc = """# t

## x

- `ip link add a type foo`
  - it is handled by `foo_link_ops`
  - the request is handled by `foo_newlink`
    - it creates the queue first
      - `foo_alloc` is called to allocate it
    - calls `foo_register` to make it visible
  - `foo_dispatch` is handled by `foo_worker`
- some words with no call at all
"""
    spec = parse_prose(doc, "t.md")
    (path,) = spec.paths
    f = by_function(path)
    assert path.trigger == "ip link add a type foo"
    assert f["foo_newlink"].parent == path.steps[0].number
    assert f["foo_alloc"].parent == f["foo_newlink"].number
    assert f["foo_register"].parent == f["foo_newlink"].number
    # document order of callees is kept
    kids = [s.function for s in path.children(f["foo_newlink"].number)]
    assert kids == ["foo_alloc", "foo_register"]
    assert f["foo_worker"].parent == f["foo_dispatch"].number
    assert "it is handled by `foo_link_ops`" in path.steps[0].notes
    assert "some words with no call at all" in spec.notes
