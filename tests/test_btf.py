"""Tests for callpath.probes.btf (BTF reader).

Synthetic blobs follow Documentation/bpf/btf.rst / include/uapi/linux/btf.h;
the last group checks facts of the running kernel's /sys/kernel/btf/vmlinux
(verified against 6.18, net/core/dev.c) and is skipped where it is absent.
"""

from __future__ import annotations

import os
import struct

import pytest

from callpath.probes.btf import (
    BtfError,
    BtfFunction,
    BtfIndex,
    BtfParam,
    load_kernel_btf,
    parse_btf,
)

# BTF kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


class BtfBuilder:
    """Packs header + type records + strings into a BTF blob.

    For split BTF pass ``base``: type ids then continue after the base's last
    id, and string offsets continue after the base's string-section length
    (the module's own string section does not start with a NUL, as libbpf
    emits it).
    """

    def __init__(self, endian: str = "<", base: "BtfBuilder | None" = None):
        self.endian = endian
        self.base = base
        self.types: list[bytes] = []
        if base is None:
            self.strs = bytearray(b"\0")
            self.str_base = 0
            self.first_id = 1
        else:
            self.strs = bytearray()
            self.str_base = base.str_base + len(base.strs)
            self.first_id = base.first_id + len(base.types)
        self._str_index: dict[str, int] = {"": 0}

    def s(self, text: str) -> int:
        if text in self._str_index:
            return self._str_index[text]
        if self.base is not None and text in self.base._str_index:
            return self.base._str_index[text]
        off = self.str_base + len(self.strs)
        self.strs += text.encode() + b"\0"
        self._str_index[text] = off
        return off

    def _u32(self, *vals: int) -> bytes:
        return struct.pack(self.endian + "I" * len(vals), *vals)

    def add(self, kind: int, name: str = "", vlen: int = 0, size_or_type: int = 0,
            extra: bytes = b"", kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append(self._u32(self.s(name) if name else 0, info, size_or_type) + extra)
        return self.first_id + len(self.types) - 1

    # convenience constructors
    def int_(self, name: str, size: int = 4, signed: bool = True) -> int:
        enc = (1 if signed else 0) << 24 | (size * 8)
        return self.add(INT, name, 0, size, self._u32(enc))

    def ptr(self, to: int) -> int:
        return self.add(PTR, "", 0, to)

    def struct(self, name: str, members: list[tuple[str, int, int]] = (), size: int = 8) -> int:
        extra = b"".join(self._u32(self.s(n) if n else 0, t, off) for n, t, off in members)
        return self.add(STRUCT, name, len(members), size, extra)

    def func(self, name: str, ret: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(self._u32(self.s(n) if n else 0, t) for n, t in params)
        proto = self.add(FUNC_PROTO, "", len(params), ret, extra)
        return self.add(FUNC, name, 1, proto)  # vlen = linkage (global)

    def blob(self, magic: int = 0xEB9F, version: int = 1, hdr_extra: bytes = b"") -> bytes:
        types = b"".join(self.types)
        hdr_len = 24 + len(hdr_extra)
        hdr = struct.pack(self.endian + "HBBIIIII", magic, version, 0, hdr_len,
                          0, len(types), len(types), len(self.strs))
        return hdr + hdr_extra + types + bytes(self.strs)


def build_base(endian: str = "<") -> tuple[BtfBuilder, dict[str, int]]:
    b = BtfBuilder(endian)
    ids: dict[str, int] = {}
    ids["int"] = b.int_("int")
    ids["uint"] = b.int_("unsigned int", signed=False)
    ids["sk_buff"] = b.struct("sk_buff", [("len", ids["uint"], 0), ("next", 0, 64)], 16)
    ids["skb_p"] = b.ptr(ids["sk_buff"])
    ids["skb_pp"] = b.ptr(ids["skb_p"])
    ids["skb_ppp"] = b.ptr(ids["skb_pp"])
    ids["net_device"] = b.struct("net_device", [("ifindex", ids["int"], 0)], 4)
    ids["const_nd"] = b.add(CONST, "", 0, ids["net_device"])
    ids["const_nd_p"] = b.ptr(ids["const_nd"])
    ids["const_nd_pp"] = b.ptr(ids["const_nd_p"])
    ids["myint"] = b.add(TYPEDEF, "myint", 0, ids["int"])
    ids["u32"] = b.add(TYPEDEF, "u32", 0, ids["uint"])
    # Records of every other kind, with their trailing data, placed before
    # the FUNCs so a wrong record size would corrupt everything after them.
    ids["arr"] = b.add(ARRAY, "", 0, 0, b._u32(ids["int"], ids["uint"], 4))
    ids["union"] = b.add(UNION, "u", 2, 4, b._u32(b.s("a"), ids["int"], 0, b.s("b"), ids["uint"], 0))
    ids["enum"] = b.add(ENUM, "color", 3, 4,
                        b"".join(b._u32(b.s(n), v) for n, v in (("RED", 0), ("GREEN", 1), ("BLUE", 2))))
    ids["fwd"] = b.add(FWD, "sock", 0, 0)
    ids["volatile"] = b.add(VOLATILE, "", 0, ids["int"])
    ids["var"] = b.add(VAR, "some_var", 0, ids["int"], b._u32(1))
    ids["datasec"] = b.add(DATASEC, ".data", 1, 4, b._u32(ids["var"], 0, 4))
    ids["float"] = b.add(FLOAT, "double", 0, 8)
    ids["decl_tag"] = b.add(DECL_TAG, "tag", 0, ids["sk_buff"], b._u32(0xFFFFFFFF))
    ids["type_tag"] = b.add(TYPE_TAG, "rcu", 0, ids["sk_buff"])
    ids["rcu_skb_p"] = b.ptr(ids["type_tag"])
    ids["enum64"] = b.add(ENUM64, "big", 2, 8, b._u32(b.s("X"), 1, 0, b.s("Y"), 0, 1))
    ids["skb_ptr_t"] = b.add(TYPEDEF, "skb_ptr_t", 0, ids["skb_p"])
    ids["restrict_p"] = b.add(RESTRICT, "", 0, ids["skb_p"])
    ids["anon"] = b.struct("", [("v", ids["uint"], 0)], 4)
    ids["pte_t"] = b.add(TYPEDEF, "pte_t", 0, ids["anon"])
    ids["cb_proto"] = b.add(FUNC_PROTO, "", 1, ids["int"], b._u32(0, ids["skb_p"]))
    ids["cb_p"] = b.ptr(ids["cb_proto"])

    ids["f_main"] = b.func("my_func", ids["int"], [
        ("skb", ids["skb_p"]), ("pskb", ids["skb_pp"]),
        ("dev", ids["const_nd_p"]), ("x", ids["myint"])])
    ids["f_pp"] = b.func("pp_first", 0, [("pskb", ids["skb_pp"]), ("len", ids["u32"])])
    ids["f_none"] = b.func("no_skb", ids["skb_p"], [
        ("p", ids["skb_ppp"]), ("dd", ids["const_nd_pp"]), ("", ids["int"])])
    ids["f_var"] = b.func("my_printk", ids["int"], [("fmt", ids["skb_p"]), ("", 0)])
    ids["f_misc"] = b.func("misc", ids["u32"], [
        ("t", ids["skb_ptr_t"]), ("r", ids["restrict_p"]), ("tagged", ids["rcu_skb_p"]),
        ("pte", ids["pte_t"]), ("cb", ids["cb_p"]), ("v", ids["volatile"]),
        ("c", ids["enum"]), ("sk", b.ptr(ids["fwd"])), ("vp", b.ptr(0))])
    return b, ids


def _check_main_function(idx: BtfIndex) -> None:
    f = idx.function("my_func")
    assert isinstance(f, BtfFunction)
    assert f.name == "my_func"
    assert f.module == "vmlinux"
    assert f.return_type == "int"
    assert f.variadic is False
    assert f.params == (
        BtfParam("skb", "struct sk_buff *", 1, "struct sk_buff"),
        BtfParam("pskb", "struct sk_buff **", 2, "struct sk_buff"),
        BtfParam("dev", "const struct net_device *", 1, "struct net_device"),
        BtfParam("x", "myint", 0, "int"),
    )
    assert f.skb_arg() == (1, 1)
    assert f.netdev_arg() == 3


# --------------------------------------------------------------- synthetic
def test_synthetic_function_params_depths_and_args():
    b, _ = build_base()
    idx = parse_btf(b.blob())
    _check_main_function(idx)
    assert idx.modules == ("vmlinux",)
    assert len(idx) == 5  # my_func, pp_first, no_skb, my_printk, misc
    assert "my_func" in idx and "nope" not in idx and 42 not in idx
    assert idx.function("nope") is None


def test_big_endian_blob_parses_identically():
    b, _ = build_base(">")
    blob = b.blob()
    assert blob[:2] == b"\xeb\x9f"
    _check_main_function(parse_btf(blob))


def test_skb_arg_depth_two_and_none_cases():
    b, _ = build_base()
    idx = parse_btf(b.blob())
    pp = idx.function("pp_first")
    assert pp.return_type == "void"
    assert pp.skb_arg() == (1, 2)
    assert pp.params[1] == BtfParam("len", "u32", 0, "unsigned int")
    assert pp.netdev_arg() is None

    none = idx.function("no_skb")
    # struct sk_buff *** is depth 3, const struct net_device ** is depth 2:
    # neither qualifies.
    assert [p.pointer_depth for p in none.params] == [3, 2, 0]
    assert none.params[0].type_name == "struct sk_buff ***"
    assert none.params[1].type_name == "const struct net_device **"
    assert none.params[2].name == ""
    assert none.skb_arg() is None
    assert none.netdev_arg() is None
    assert none.return_type == "struct sk_buff *"


def test_variadic_and_modifier_kinds():
    b, _ = build_base()
    idx = parse_btf(b.blob())
    v = idx.function("my_printk")
    assert v.variadic is True
    assert len(v.params) == 1  # the trailing "..." is not a parameter

    m = idx.function("misc")
    by = {p.name: p for p in m.params}
    assert m.return_type == "u32"
    assert by["t"] == BtfParam("t", "skb_ptr_t", 1, "struct sk_buff")
    assert by["r"] == BtfParam("r", "struct sk_buff * restrict", 1, "struct sk_buff")
    assert by["tagged"] == BtfParam("tagged", "struct sk_buff *", 1, "struct sk_buff")
    assert by["pte"] == BtfParam("pte", "pte_t", 0, "pte_t")
    assert by["cb"] == BtfParam("cb", "int (*)(struct sk_buff *)", 1, "int (struct sk_buff *)")
    assert by["v"] == BtfParam("v", "volatile int", 0, "int")
    assert by["c"] == BtfParam("c", "enum color", 0, "enum color")
    assert by["sk"] == BtfParam("sk", "struct sock *", 1, "struct sock")
    assert by["vp"] == BtfParam("vp", "void *", 1, "void")
    # typedef'd pointer counts as depth 1 -> first skb param is arg 1
    assert m.skb_arg() == (1, 1)


def test_clone_suffixes_are_stripped_from_queries():
    b, _ = build_base()
    idx = parse_btf(b.blob())
    for q in ("my_func.isra.0", "my_func.constprop.0", "my_func.part.0",
              "my_func.constprop.0.isra.0", "my_func.cold"):
        assert q in idx, q
        f = idx.function(q)
        assert f is not None and f.name == "my_func"
    assert idx.function("my_fun.isra.0") is None
    assert "other.isra.0" not in idx


def test_header_extension_is_skipped():
    # hdr_len > 24 (future header fields): sections are relative to hdr end.
    b, _ = build_base()
    idx = parse_btf(b.blob(hdr_extra=b"\0" * 8))
    _check_main_function(idx)


# --------------------------------------------------------------- split BTF
def build_module(base: BtfBuilder, base_ids: dict[str, int]) -> tuple[BtfBuilder, dict[str, int]]:
    m = BtfBuilder(base.endian, base=base)
    ids: dict[str, int] = {}
    ids["priv"] = m.struct("mod_priv", [("refs", base_ids["int"], 0)], 4)
    ids["priv_p"] = m.ptr(ids["priv"])
    ids["mod_len_t"] = m.add(TYPEDEF, "mod_len_t", 0, base_ids["u32"])
    ids["nd_p"] = m.ptr(base_ids["net_device"])
    ids["f_xmit"] = m.func("mod_xmit", base_ids["int"], [
        ("priv", ids["priv_p"]), ("skb", base_ids["skb_p"]),
        ("len", ids["mod_len_t"]), ("dev", ids["nd_p"])])
    return m, ids


def test_split_btf_ids_and_strings_continue_from_base():
    b, bids = build_base()
    m, mids = build_module(b, bids)
    assert mids["priv"] == len(b.types) + 1  # first module id follows base
    assert m.s("mod_priv") >= len(b.strs)  # module strings follow base's

    base_idx = parse_btf(b.blob())
    mod_idx = parse_btf(m.blob(), base=base_idx, module="mymod")
    assert mod_idx.modules == ("mymod",)
    assert len(mod_idx) == 1
    assert "my_func" not in mod_idx  # only the module's own FUNCs
    f = mod_idx.function("mod_xmit")
    assert f.module == "mymod"
    assert f.return_type == "int"
    assert f.params == (
        BtfParam("priv", "struct mod_priv *", 1, "struct mod_priv"),
        BtfParam("skb", "struct sk_buff *", 1, "struct sk_buff"),
        BtfParam("len", "mod_len_t", 0, "unsigned int"),
        BtfParam("dev", "struct net_device *", 1, "struct net_device"),
    )
    assert f.skb_arg() == (2, 1)
    assert f.netdev_arg() == 4


def test_split_btf_without_base_is_rejected():
    b, bids = build_base()
    m, _ = build_module(b, bids)
    with pytest.raises(BtfError):
        parse_btf(m.blob())


def test_split_btf_endianness_must_match_base():
    b, bids = build_base("<")
    base_idx = parse_btf(b.blob())
    be_base, be_ids = build_base(">")
    m, _ = build_module(be_base, be_ids)
    with pytest.raises(BtfError, match="byte order"):
        parse_btf(m.blob(), base=base_idx, module="x")


def test_load_kernel_btf_merges_modules_and_lists_missing(tmp_path):
    b, bids = build_base()
    m, _ = build_module(b, bids)
    (tmp_path / "vmlinux").write_bytes(b.blob())
    (tmp_path / "mymod").write_bytes(m.blob())
    idx = load_kernel_btf(["mymod", "absent_mod", "mymod"], root=str(tmp_path))
    assert idx.modules == ("vmlinux", "mymod")
    assert idx.missing_modules == ("absent_mod",)
    assert len(idx) == 6
    assert idx.function("my_func").module == "vmlinux"
    assert idx.function("mod_xmit").module == "mymod"
    assert idx.function("mod_xmit.isra.0").skb_arg() == (2, 1)

    only = load_kernel_btf(root=str(tmp_path))
    assert only.modules == ("vmlinux",) and only.missing_modules == ()
    assert "mod_xmit" not in only


def test_load_kernel_btf_missing_vmlinux_names_path(tmp_path):
    with pytest.raises(BtfError) as ei:
        load_kernel_btf(root=str(tmp_path))
    assert str(tmp_path / "vmlinux") in str(ei.value)


def test_load_kernel_btf_rejects_path_like_module_names(tmp_path):
    b, _ = build_base()
    (tmp_path / "vmlinux").write_bytes(b.blob())
    with pytest.raises(BtfError, match="invalid module name"):
        load_kernel_btf(["../etc/passwd"], root=str(tmp_path))


# --------------------------------------------------------------- bad input
def test_bad_magic():
    b, _ = build_base()
    with pytest.raises(BtfError, match="magic") as ei:
        parse_btf(b.blob(magic=0x1234))
    assert isinstance(ei.value, ValueError)
    with pytest.raises(BtfError, match="magic"):
        parse_btf(b"\x7fELF" + b"\0" * 60)


@pytest.mark.parametrize("cut", [0, 1, 3, 10, 23])
def test_truncated_header(cut):
    b, _ = build_base()
    with pytest.raises(BtfError, match="truncated"):
        parse_btf(b.blob()[:cut])


def test_truncated_sections():
    b, _ = build_base()
    blob = b.blob()
    # Cutting the tail loses part of the string section.
    with pytest.raises(BtfError, match="truncated.*string section"):
        parse_btf(blob[:-3])
    # Cutting into the type section.
    with pytest.raises(BtfError, match="truncated.*type section"):
        parse_btf(blob[: 24 + 40])


def test_type_len_ending_mid_record():
    b, _ = build_base()
    blob = bytearray(b.blob())
    type_len = struct.unpack_from("<I", blob, 12)[0]
    struct.pack_into("<I", blob, 12, type_len - 4)  # last record cut short
    with pytest.raises(BtfError, match="truncated"):
        parse_btf(bytes(blob))


def test_unknown_kind_and_version():
    b, _ = build_base()
    b.add(25, "bogus")
    with pytest.raises(BtfError, match="unknown BTF kind 25"):
        parse_btf(b.blob())
    b2, _ = build_base()
    with pytest.raises(BtfError, match="version"):
        parse_btf(b2.blob(version=2))


def test_dangling_type_reference_raises_on_lookup():
    b = BtfBuilder()
    b.func("broken", 0, [("p", 999)])
    idx = parse_btf(b.blob())
    assert "broken" in idx
    with pytest.raises(BtfError, match="type id 999"):
        idx.function("broken")


# --------------------------------------------------------------- real kernel
VMLINUX = "/sys/kernel/btf/vmlinux"
needs_vmlinux = pytest.mark.skipif(
    not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} not readable")


@pytest.fixture(scope="module")
def kernel_idx() -> BtfIndex:
    return load_kernel_btf()


@needs_vmlinux
def test_kernel_xmit_and_rx_entry_points(kernel_idx):
    # net/core/dev.c: int __dev_queue_xmit(struct sk_buff *skb,
    #                                      struct net_device *sb_dev)
    f = kernel_idx.function("__dev_queue_xmit")
    assert f is not None and f.module == "vmlinux"
    assert [p.name for p in f.params] == ["skb", "sb_dev"]
    assert f.params[0].type_name == "struct sk_buff *"
    assert f.skb_arg() == (1, 1)
    assert f.netdev_arg() == 2
    assert f.return_type == "int"
    # int netif_rx(struct sk_buff *skb)
    rx = kernel_idx.function("netif_rx")
    assert [p.name for p in rx.params] == ["skb"]
    assert rx.skb_arg() == (1, 1)
    assert rx.netdev_arg() is None


@needs_vmlinux
def test_kernel_dev_forward_skb(kernel_idx):
    # net/core/dev.c: int dev_forward_skb(struct net_device *dev,
    #                                     struct sk_buff *skb)
    f = kernel_idx.function("dev_forward_skb")
    assert f is not None
    assert tuple(p.name for p in f.params) == ("dev", "skb")
    assert tuple(p.type_name for p in f.params) == ("struct net_device *", "struct sk_buff *")
    assert f.skb_arg() == (2, 1)
    assert f.netdev_arg() == 1


@needs_vmlinux
def test_kernel_double_pointer_skb(kernel_idx):
    # net/core/dev.c: static int __netif_receive_skb_core(struct sk_buff **pskb,
    #                     bool pfmemalloc, struct packet_type **ppt_prev)
    f = kernel_idx.function("__netif_receive_skb_core")
    assert f is not None
    assert f.params[0] == BtfParam("pskb", "struct sk_buff **", 2, "struct sk_buff")
    assert f.params[1].type_name == "bool"
    assert f.skb_arg() == (1, 2)


@needs_vmlinux
def test_kernel_misc_facts(kernel_idx):
    assert len(kernel_idx) > 10000
    assert "definitely_not_a_kernel_function_xyz" not in kernel_idx
    # clone-suffixed symbol names as seen in kallsyms resolve to the BTF FUNC
    f = kernel_idx.function("netif_rx.isra.0")
    assert f is not None and f.name == "netif_rx"
    # kernel/printk/printk.c: int _printk(const char *fmt, ...)
    p = kernel_idx.function("_printk")
    assert p.variadic and p.params == (BtfParam("fmt", "const char *", 1, "char"),)


@needs_vmlinux
def test_kernel_enum_return_names(kernel_idx):
    # include/linux/netdevice.h: enum rx_handler_result { RX_HANDLER_CONSUMED, _ANOTHER, _EXACT, _PASS }
    f = kernel_idx.function("netdev_rx_handler_register")
    assert f is not None and f.return_enum == ()  # int
    for name in ("macvlan_handle_frame", "tap_handle_frame"):
        f = kernel_idx.function(name)
        if f is not None:
            assert f.return_type == "rx_handler_result_t"
            assert dict(f.return_enum) == {0: "RX_HANDLER_CONSUMED", 1: "RX_HANDLER_ANOTHER", 2: "RX_HANDLER_EXACT", 3: "RX_HANDLER_PASS"}
            break
    else:
        pytest.skip("no rx_handler in this kernel's BTF")
