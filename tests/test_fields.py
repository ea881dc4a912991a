"""Field offsets from BTF (probes/btf.py BtfIndex.field, probes/fields.py)."""

from __future__ import annotations

import os
import struct

import pytest
from test_btf import STRUCT, TYPEDEF, UNION, BtfBuilder

from callpath.probes.btf import BtfError, load_kernel_btf, parse_btf
from callpath.probes.fields import PROGRAM_FIELDS, FieldError, field_cflags, resolve_fields
from callpath.probes.cflags import bpf_cflags


def _members(b: BtfBuilder, members) -> bytes:
    return b"".join(struct.pack("<III", b.s(n) if n else 0, t, off) for n, t, off in members)


def synthetic_kernel(ifindex_bits: int = 8 * 8, with_netns: bool = True, dev_size_ptr: bool = True) -> bytes:
    """A BTF blob shaped like the kernel's: sk_buff.dev inside an anonymous union in an anonymous struct."""
    b = BtfBuilder()
    i32 = b.int_("int")
    u32 = b.int_("unsigned int", signed=False)
    u8 = b.int_("unsigned char", 1, signed=False)
    ulong = b.int_("long unsigned int", 8, signed=False)
    net = b.add(STRUCT, "net", 0, 0)  # completed below (ids must exist before use)
    net_ptr = b.ptr(net)
    dev_fwd = b.add(STRUCT, "net_device", 0, 0)
    dev_ptr = b.ptr(dev_fwd)
    skb_fwd = b.add(STRUCT, "sk_buff_fwd_unused", 0, 0)
    skb_ptr = b.ptr(skb_fwd)
    # possible_net_t: typedef of an anonymous struct { struct net *net; }
    pnet_members = [("net", net_ptr, 0)] if with_netns else []
    pnet = b.add(STRUCT, "", len(pnet_members), 8 if with_netns else 0, _members(b, pnet_members))
    possible_net_t = b.add(TYPEDEF, "possible_net_t", 0, pnet)
    ns_common = b.add(STRUCT, "ns_common", 2, 24, _members(b, [("stashed", ulong, 0), ("inum", u32, 128)]))
    # the real definitions, later in the blob (first complete definition wins)
    b.add(STRUCT, "net", 2, 256, _members(b, [("passive", i32, 0), ("ns", ns_common, 64 * 8)]))
    nd = [("name", ulong, 0), ("ifindex", i32 if dev_size_ptr else ulong, ifindex_bits), ("nd_net", possible_net_t, 40 * 8)]
    b.add(STRUCT, "net_device", len(nd), 64, _members(b, nd))
    inner_union = b.add(UNION, "", 2, 8, _members(b, [("dev", dev_ptr, 0), ("dev_scratch", ulong, 0)]))
    anon_struct = b.add(STRUCT, "", 3, 24, _members(b, [("next", skb_ptr, 0), ("prev", skb_ptr, 64), ("", inner_union, 128)]))
    outer_union = b.add(UNION, "", 2, 24, _members(b, [("", anon_struct, 0), ("rbnode", ulong, 0)]))
    # pkt_type: a 3-bit bitfield at bit 8 of byte 32 (kind_flag set on the struct)
    sk = [("", outer_union, 0), ("len", u32, 24 * 8), ("pkt_type", u8, (3 << 24) | (32 * 8 + 8))]
    b.add(STRUCT, "sk_buff", len(sk), 64, _members(b, sk), kflag=1)
    return b.blob()


def test_nested_anonymous_members_and_typedefs():
    idx = parse_btf(synthetic_kernel())
    dev = idx.field("sk_buff.dev")
    assert (dev.offset, dev.size, dev.type_name, dev.module) == (16, 8, "struct net_device *", "vmlinux")
    assert idx.field("sk_buff.dev_scratch").offset == 16
    assert idx.field("sk_buff.prev").offset == 8
    assert (idx.field("net_device.ifindex").offset, idx.field("net_device.ifindex").size) == (8, 4)
    assert idx.field("net_device.nd_net.net").offset == 40
    inum = idx.field("net.ns.inum")
    assert (inum.offset, inum.size, inum.type_name) == (64 + 16, 4, "unsigned int")


def test_bitfield_missing_member_and_bad_paths():
    idx = parse_btf(synthetic_kernel())
    pkt = idx.field("sk_buff.pkt_type")
    assert (pkt.offset, pkt.bitfield, pkt.bit_offset) == (33, 3, 0)
    assert idx.field("sk_buff.nope") is None
    assert idx.field("no_such_struct.x") is None
    with pytest.raises(BtfError, match="not a struct or union"):
        idx.field("sk_buff.len.x")
    with pytest.raises(BtfError, match="TYPE.member"):
        idx.field("sk_buff")


def test_resolve_fields_gives_offsets_and_cflags():
    res = resolve_fields(parse_btf(synthetic_kernel()), "9.9-test")
    assert {k: v["offset"] for k, v in res.items()} == {
        "sk_buff.dev": 16, "net_device.ifindex": 8, "net_device.nd_net.net": 40, "net.ns.inum": 80}
    assert res["sk_buff.dev"]["source"] == "BTF vmlinux"
    flags = field_cflags(res)
    assert "-DCALLPATH_OFF_SKB_DEV=16" in flags and "-DCALLPATH_OFF_NET_INUM=80" in flags
    assert set(flags) <= set(bpf_cflags(256, res))


def test_missing_required_field_names_field_and_kernel():
    b = BtfBuilder()
    i32 = b.int_("int")
    b.struct("net_device", [("ifindex", i32, 0)], size=8)
    with pytest.raises(FieldError, match=r"kernel 9\.9-test: field sk_buff\.dev .*not in the kernel's BTF"):
        resolve_fields(parse_btf(b.blob()), "9.9-test")


def test_size_mismatch_is_refused():
    with pytest.raises(FieldError, match="net_device.ifindex is 8 bytes"):
        resolve_fields(parse_btf(synthetic_kernel(dev_size_ptr=False)), "9.9-test")


def test_without_netns_both_netns_fields_are_off():
    res = resolve_fields(parse_btf(synthetic_kernel(with_netns=False)), "9.9-test")
    assert res["sk_buff.dev"]["offset"] == 16
    assert res["net_device.nd_net.net"]["offset"] == -1
    assert res["net.ns.inum"]["offset"] == -1  # found, but useless without nd_net.net
    assert "not read" in res["net.ns.inum"]["source"]


def test_no_btf_reads_nothing():
    res = resolve_fields(None, "9.9-test")
    assert all(v["offset"] == -1 and v["source"] == "no BTF" for v in res.values())
    assert field_cflags({}) == [f"-D{f.macro}=-1" for f in PROGRAM_FIELDS]


VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} not readable")
def test_running_kernel_has_every_program_field():
    # the layouts in include/linux/skbuff.h, netdevice.h, net/net_namespace.h of
    # any kernel since v4.13: dev is the third pointer of struct sk_buff
    idx = load_kernel_btf()
    res = resolve_fields(idx, os.uname().release)
    assert res["sk_buff.dev"]["offset"] == 16
    assert res["sk_buff.dev"]["type"] == "struct net_device *"
    assert res["net_device.ifindex"]["type"] == "int"
    assert all(v["offset"] > 0 for k, v in res.items() if k != "sk_buff.dev")
    assert idx.field("net.ns.inum").type_name == "unsigned int"
