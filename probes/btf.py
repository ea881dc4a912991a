"""Minimal pure-Python reader of the kernel's BTF (BPF Type Format).

Reads ``/sys/kernel/btf/vmlinux`` and split module BTF
``/sys/kernel/btf/<module>`` and answers one question quickly: *what is the
prototype of kernel function X* (parameter names, C-like type spellings,
pointer depths), so probes can find which argument holds the
``struct sk_buff *`` or the ``struct net_device *``.

Format references (Linux kernel sources):

* ``Documentation/bpf/btf.rst`` -- section 2 ("BTF Type and String
  Encoding": header, string section, btf_type and per-kind data);
* ``include/uapi/linux/btf.h`` -- ``struct btf_header``, ``struct btf_type``,
  ``BTF_INFO_KIND``/``BTF_INFO_VLEN``/``BTF_INFO_KFLAG``, ``struct btf_param``
  and the other per-kind trailing records.

Layout summary (all integers in the byte order given by the magic)::

    btf_header { u16 magic = 0xeB9F; u8 version = 1; u8 flags;
                 u32 hdr_len; u32 type_off; u32 type_len;
                 u32 str_off; u32 str_len; }
    # type section starts at hdr_len + type_off, string section at
    # hdr_len + str_off ("all offsets are in bytes relative to the end of
    # this header").
    btf_type { u32 name_off;
               u32 info;   # vlen bits 0-15, kind bits 24-28, kind_flag bit 31
               u32 size_or_type; }
    # followed by kind-specific data: INT +4, ARRAY +12, STRUCT/UNION
    # +12*vlen, ENUM +8*vlen, FUNC_PROTO +8*vlen (btf_param {u32 name_off,
    # u32 type}), VAR +4, DATASEC +12*vlen, DECL_TAG +4, ENUM64 +12*vlen.

Type id 0 is ``void``; the first record of the type section has id 1.
Split BTF (kernel modules; ``struct btf`` ``start_id``/``start_str_off`` in
kernel/bpf/btf.c): type ids continue after the base (vmlinux) BTF's last id,
and string offsets ``>= base str_len`` index the module's own string section
at ``offset - base str_len``; smaller offsets refer to the base's strings.

Parsing does one pass over the type records (recording each record's byte
offset and the FUNC names); display strings are built lazily, only for the
FUNC records that are looked up, and cached.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

__all__ = [
    "BtfError",
    "BtfParam",
    "BtfFunction",
    "BtfIndex",
    "BtfField",
    "parse_btf",
    "load_kernel_btf",
    "BTF_MAGIC",
]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HDR_MIN_LEN = 24  # sizeof(struct btf_header)

# Kinds (include/uapi/linux/btf.h, BTF_KIND_*).
KIND_UNKN = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes of kind-specific data following the 12-byte btf_type: (fixed, per_vlen).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}

# Modifiers skipped when computing pointer depth / target.
_SKIP_KINDS = frozenset(
    {KIND_TYPEDEF, KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG}
)
_QUALIFIER_WORD = {KIND_CONST: "const", KIND_VOLATILE: "volatile", KIND_RESTRICT: "restrict"}

# Longest modifier/pointer chain followed before declaring the data corrupt
# (guards against reference cycles in malformed input).
_MAX_CHAIN = 64

# A C identifier followed by a compiler clone suffix (".isra.0",
# ".constprop.0", ".part.0", ".cold", ".llvm.<hash>", ...). C identifiers
# cannot contain '.', so everything from the first '.' is a suffix.
_CLONE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\..+$")


class BtfError(ValueError):
    """Malformed, truncated or unreadable BTF data (a ``ValueError``)."""


@dataclass(frozen=True)
class BtfParam:
    """One parameter of a function prototype (a ``struct btf_param``).

    Attributes:
        name: parameter name, ``""`` when BTF records none (name_off 0).
        type_name: C-like spelling of the declared type, keeping typedef
            names and qualifiers, e.g. ``"struct sk_buff *"``,
            ``"struct sk_buff **"``, ``"const struct net_device *"``,
            ``"u32"``, ``"int"``. Function pointers are spelled
            ``"int (*)(struct sk_buff *)"``. BTF type tags (``__user``,
            ``__rcu``...) are not shown.
        pointer_depth: number of ``PTR`` levels (0, 1, 2, ...) found while
            following the type through TYPEDEF/CONST/VOLATILE/RESTRICT/
            TYPE_TAG links (so ``typedef struct foo *foo_t`` has depth 1).
        target: the pointed-to (or plain) base type after skipping all
            pointers and modifiers, with its kind prefix: ``"struct sk_buff"``,
            ``"union bpf_attr"``, ``"enum foo"``, ``"int"``, ``"void"``; for
            a function pointer, the prototype spelling
            ``"int (struct sk_buff *)"``; for a pointer to an array, the array
            spelling ``"layer_mask_t[16]"``. An anonymous struct/union/enum
            reached through a typedef is named by that typedef (``"pte_t"``,
            ``"sockptr_t"``); otherwise it is ``"struct (anon)"``.
    """

    name: str
    type_name: str
    pointer_depth: int
    target: str


@dataclass(frozen=True)
class BtfFunction:
    """A BTF ``FUNC`` record resolved through its ``FUNC_PROTO``.

    Attributes:
        name: function name as recorded in BTF (without clone suffixes).
        params: fixed parameters in declaration order (argument 1 first).
            A trailing variadic ``...`` is not included; see ``variadic``.
        return_type: C-like spelling of the return type, ``"void"`` for
            type id 0.
        module: ``"vmlinux"`` or the module name the record came from.
        variadic: True when the prototype ends with ``...`` (a final
            btf_param with name_off 0 and type 0).
        return_enum: when the return type is an enum (possibly behind a
            typedef, e.g. ``rx_handler_result_t``), its ``(value, name)``
            enumerators from the ENUM/ENUM64 record; ``()`` otherwise.
    """

    name: str
    params: tuple[BtfParam, ...]
    return_type: str
    module: str
    variadic: bool = False
    return_enum: tuple[tuple[int, str], ...] = ()

    def skb_arg(self) -> tuple[int, int] | None:
        """Return ``(arg_index, pointer_depth)`` for the first parameter whose
        target is ``struct sk_buff`` at pointer depth 1 or 2.

        ``arg_index`` is 1-based (matching BPF_KPROBE/PT_REGS_PARMn numbering);
        ``pointer_depth`` is 1 for ``struct sk_buff *`` and 2 for
        ``struct sk_buff **``. Returns None when no parameter qualifies.
        """
        for i, p in enumerate(self.params, 1):
            if p.target == "struct sk_buff" and p.pointer_depth in (1, 2):
                return (i, p.pointer_depth)
        return None

    def netdev_arg(self) -> int | None:
        """Return the 1-based index of the first ``struct net_device *``
        parameter (const/volatile/typedef allowed, pointer depth exactly 1),
        or None."""
        for i, p in enumerate(self.params, 1):
            if p.target == "struct net_device" and p.pointer_depth == 1:
                return i
        return None


@dataclass(frozen=True)
class BtfField:
    """Where a struct member lies, from BTF (:meth:`BtfIndex.field`).

    Attributes:
        path: the dotted path looked up (``"sk_buff.dev"``).
        offset: bytes from the start of the outermost type.
        size: bytes of the member's type (pointers 8).
        type_name: C-like spelling of the member's type (``"struct net_device *"``).
        module: BTF blob that defined the outermost type (``"vmlinux"`` or a module).
        bitfield: bits of a bitfield member, 0 for an ordinary member.
        bit_offset: for a bitfield, bits after ``offset``; else 0.
    """

    path: str
    offset: int
    size: int
    type_name: str
    module: str
    bitfield: int = 0
    bit_offset: int = 0


class _Table:
    """Raw view of one BTF blob: record offsets plus lazily decoded strings."""

    __slots__ = (
        "module", "data", "endian", "base", "start_id", "str_base",
        "str_start", "str_len", "offsets", "func_ids", "_u32", "_u32x3",
        "_str_cache",
    )

    def __init__(self, data: bytes, base: "_Table | None", module: str):
        self.module = module
        self.base = base
        self._str_cache: dict[int, str] = {}
        n = len(data)
        if n < 4:
            raise BtfError(f"{module}: BTF data truncated: {n} bytes, header needs {_HDR_MIN_LEN}")
        (magic_le,) = struct.unpack_from("<H", data, 0)
        if magic_le == BTF_MAGIC:
            endian = "<"
        elif magic_le == 0x9FEB:
            endian = ">"
        else:
            raise BtfError(
                f"{module}: bad BTF magic 0x{magic_le:04x} (bytes {data[:2].hex()}), "
                f"expected 0x{BTF_MAGIC:04x} in either byte order"
            )
        if n < _HDR_MIN_LEN:
            raise BtfError(f"{module}: BTF data truncated: {n} bytes, header needs {_HDR_MIN_LEN}")
        if base is not None and base.endian != endian:
            raise BtfError(f"{module}: split BTF byte order differs from its base BTF")
        self.endian = endian
        self.data = data
        self._u32 = struct.Struct(endian + "I")
        self._u32x3 = struct.Struct(endian + "III")

        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "HBBIIIII", data, 0
        )
        if version != BTF_VERSION:
            raise BtfError(f"{module}: unsupported BTF version {version} (expected {BTF_VERSION})")
        if hdr_len < _HDR_MIN_LEN:
            raise BtfError(f"{module}: BTF hdr_len {hdr_len} is smaller than {_HDR_MIN_LEN}")
        if hdr_len > n:
            raise BtfError(f"{module}: BTF data truncated: hdr_len {hdr_len} > {n} bytes")
        t_start = hdr_len + type_off
        t_end = t_start + type_len
        s_start = hdr_len + str_off
        s_end = s_start + str_len
        if t_end > n:
            raise BtfError(
                f"{module}: BTF data truncated: type section [{t_start}, {t_end}) "
                f"extends past end of data ({n} bytes)"
            )
        if s_end > n:
            raise BtfError(
                f"{module}: BTF data truncated: string section [{s_start}, {s_end}) "
                f"extends past end of data ({n} bytes)"
            )
        if type_off % 4:
            raise BtfError(f"{module}: BTF type_off {type_off} is not 4-byte aligned")
        self.str_start = s_start
        self.str_len = str_len
        if base is None:
            self.start_id = 1
            self.str_base = 0
            if str_len == 0 or data[s_start] != 0:
                raise BtfError(f"{module}: BTF string section must start with an empty string")
        else:
            self.start_id = base.start_id + len(base.offsets)
            self.str_base = base.str_base + base.str_len

        # One pass over the type records.
        offsets: list[int] = []
        func_ids: list[tuple[int, int]] = []  # (name_off, type id)
        append = offsets.append
        unpack = self._u32x3.unpack_from
        trailer = _TRAILER
        start_id = self.start_id
        off = t_start
        while off < t_end:
            if off + 12 > t_end:
                raise BtfError(
                    f"{module}: BTF data truncated: type record at byte {off} "
                    f"(type id {start_id + len(offsets)}) needs 12 bytes, "
                    f"{t_end - off} left in type section"
                )
            name_off, info, _st = unpack(data, off)
            kind = (info >> 24) & 0x1F
            tr = trailer.get(kind)
            if tr is None:
                raise BtfError(
                    f"{module}: unknown BTF kind {kind} at byte {off} "
                    f"(type id {start_id + len(offsets)})"
                )
            if kind == KIND_FUNC:
                func_ids.append((name_off, start_id + len(offsets)))
            append(off)
            off += 12 + tr[0] + tr[1] * (info & 0xFFFF)
        if off != t_end:
            raise BtfError(
                f"{module}: BTF data truncated: last type record ends at byte {off}, "
                f"past the type section end {t_end}"
            )
        self.offsets = offsets
        self.func_ids = func_ids

    # -- strings -------------------------------------------------------
    def string(self, off: int) -> str:
        """Decode the NUL-terminated string at (split-global) offset ``off``."""
        if off < self.str_base:
            if self.base is None:  # pragma: no cover - str_base is 0 then
                raise BtfError(f"{self.module}: string offset {off} out of range")
            return self.base.string(off)
        s = self._str_cache.get(off)
        if s is not None:
            return s
        rel = off - self.str_base
        if rel >= self.str_len:
            raise BtfError(
                f"{self.module}: BTF string offset {off} out of range "
                f"(string section covers [{self.str_base}, {self.str_base + self.str_len}))"
            )
        start = self.str_start + rel
        end = self.data.find(b"\0", start, self.str_start + self.str_len)
        if end < 0:
            raise BtfError(f"{self.module}: BTF string at offset {off} is not NUL-terminated")
        s = self.data[start:end].decode("utf-8", "replace")
        self._str_cache[off] = s
        return s

    # -- type records --------------------------------------------------
    def record(self, type_id: int) -> tuple["_Table", int, int, int, int]:
        """Return (owning table, byte offset, name_off, info, size_or_type)."""
        t = self
        while type_id < t.start_id:
            if t.base is None:
                raise BtfError(f"{self.module}: BTF type id {type_id} out of range")
            t = t.base
        idx = type_id - t.start_id
        if idx >= len(t.offsets):
            raise BtfError(
                f"{self.module}: BTF type id {type_id} out of range "
                f"(last id {t.start_id + len(t.offsets) - 1})"
            )
        off = t.offsets[idx]
        name_off, info, st = t._u32x3.unpack_from(t.data, off)
        return t, off, name_off, info, st


class _Resolver:
    """Builds C-like spellings for type ids of one table, with a cache."""

    def __init__(self, table: _Table):
        self.t = table
        self._display: dict[int, str] = {}
        self._target: dict[int, tuple[int, str]] = {}

    def _base_name(self, kind: int, info: int, name: str) -> str:
        if kind in (KIND_STRUCT, KIND_UNION):
            word = "struct" if kind == KIND_STRUCT else "union"
            return f"{word} {name}" if name else f"{word} (anon)"
        if kind in (KIND_ENUM, KIND_ENUM64):
            return f"enum {name}" if name else "enum (anon)"
        if kind == KIND_FWD:
            word = "union" if info >> 31 else "struct"
            return f"{word} {name}"
        return name or "(anon)"

    def proto(self, proto_id: int, depth: int = 0) -> tuple[str, list[tuple[str, int]], bool]:
        """(return spelling, [(param name, param type id)], variadic)."""
        _t, off, _n, info, ret = self.t.record(proto_id)
        kind = (info >> 24) & 0x1F
        if kind != KIND_FUNC_PROTO:
            raise BtfError(f"{self.t.module}: BTF type id {proto_id} is kind {kind}, expected FUNC_PROTO")
        vlen = info & 0xFFFF
        data = _t.data
        unpack = _t._u32.unpack_from
        params: list[tuple[str, int]] = []
        variadic = False
        for i in range(vlen):
            p = off + 12 + 8 * i
            name_off = unpack(data, p)[0]
            ptype = unpack(data, p + 4)[0]
            if i == vlen - 1 and name_off == 0 and ptype == 0:
                variadic = True
                break
            params.append((_t.string(name_off) if name_off else "", ptype))
        return self.display(ret, depth + 1), params, variadic

    def proto_return_id(self, proto_id: int) -> int:
        """The return type id of a FUNC_PROTO."""
        return self.t.record(proto_id)[4]

    def enum_values(self, type_id: int) -> tuple[tuple[int, str], ...]:
        """Enumerators of ``type_id`` after typedefs/modifiers, ``()`` if not an enum.

        ENUM members are ``{u32 name_off; s32 val}``; ENUM64 members
        ``{u32 name_off; u32 val_lo32; u32 val_hi32}`` (Documentation/bpf/btf.rst 2.2.6, 2.2.19).
        """
        tid = self._skip_modifiers(type_id, 0)
        if tid == 0:
            return ()
        t, off, _n, info, _st = self.t.record(tid)
        kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
        out = []
        if kind == KIND_ENUM:
            for i in range(vlen):
                name_off, val = struct.unpack_from(t._u32.format[0] + "Ii", t.data, off + 12 + 8 * i)
                out.append((val if signed or val >= 0 else val & 0xFFFFFFFF, t.string(name_off)))
        elif kind == KIND_ENUM64:
            for i in range(vlen):
                name_off, lo, hi = t._u32x3.unpack_from(t.data, off + 12 + 12 * i)
                val = (hi << 32) | lo
                if signed and val >= 1 << 63:
                    val -= 1 << 64
                out.append((val, t.string(name_off)))
        return tuple(out)

    def _proto_spelling(self, proto_id: int, depth: int, ptr: str) -> str:
        ret, params, variadic = self.proto(proto_id, depth)
        args = [self.display(pt, depth + 1) for _n, pt in params]
        if variadic:
            args.append("...")
        return f"{ret} ({ptr})({', '.join(args) or 'void'})" if ptr else f"{ret} ({', '.join(args) or 'void'})"

    def display(self, type_id: int, depth: int = 0) -> str:
        """C-like spelling of ``type_id`` (typedef names and qualifiers kept)."""
        if type_id == 0:
            return "void"
        s = self._display.get(type_id)
        if s is not None:
            return s
        if depth > _MAX_CHAIN:
            raise BtfError(f"{self.t.module}: BTF type chain too deep at id {type_id} (cycle?)")
        t, _off, name_off, info, st = self.t.record(type_id)
        kind = (info >> 24) & 0x1F
        if kind == KIND_PTR:
            inner_id = st
            # Pointer to function prototype, possibly via modifiers.
            pid = self._skip_modifiers(inner_id, depth, keep_typedef=True)
            if pid:
                pk = (self.t.record(pid)[3] >> 24) & 0x1F
                if pk == KIND_FUNC_PROTO:
                    s = self._proto_spelling(pid, depth, "*")
                    self._display[type_id] = s
                    return s
            inner = self.display(inner_id, depth + 1)
            if inner.endswith("]") and "[" in inner:
                # pointer to array: "u16 (*)[16]", then "u16 (**)[16]"
                j = inner.find(" (*")
                if j >= 0:
                    s = f"{inner[:j]} (**{inner[j + 3:]}"
                else:
                    i = inner.index("[")
                    s = f"{inner[:i]} (*){inner[i:]}"
            else:
                s = inner + "*" if inner.endswith("*") else inner + " *"
        elif kind in _QUALIFIER_WORD:
            inner = self.display(st, depth + 1)
            word = _QUALIFIER_WORD[kind]
            # qualifiers of pointers go after the '*':
            # "struct sk_buff * const", "u16 (* const)[16]".
            j = inner.find(" (*") if inner.endswith("]") else -1
            if j >= 0:
                k = inner.index(")", j)
                s = f"{inner[:k]} {word}{inner[k:]}"
            elif inner.endswith("*"):
                s = f"{inner} {word}"
            else:
                s = f"{word} {inner}"
        elif kind == KIND_TYPE_TAG:
            s = self.display(st, depth + 1)
        elif kind == KIND_ARRAY:
            elem, _idx, nelems = t._u32x3.unpack_from(t.data, _off + 12)
            s = f"{self.display(elem, depth + 1)}[{nelems}]"
        elif kind == KIND_FUNC_PROTO:
            s = self._proto_spelling(type_id, depth, "")
        else:
            s = self._base_name(kind, info, t.string(name_off) if name_off else "")
        self._display[type_id] = s
        return s

    def _skip_modifiers(self, type_id: int, depth: int, keep_typedef: bool = False) -> int:
        """Follow CONST/VOLATILE/RESTRICT/TYPE_TAG (and TYPEDEF unless
        ``keep_typedef``) links; return the first other type id (0 = void)."""
        for _ in range(_MAX_CHAIN):
            if type_id == 0:
                return 0
            _t, _o, _n, info, st = self.t.record(type_id)
            kind = (info >> 24) & 0x1F
            if kind in _SKIP_KINDS and not (keep_typedef and kind == KIND_TYPEDEF):
                type_id = st
                continue
            return type_id
        raise BtfError(f"{self.t.module}: BTF modifier chain too deep at id {type_id} (cycle?)")

    def target(self, type_id: int) -> tuple[int, str]:
        """(pointer_depth, base type spelling) skipping pointers and modifiers.

        An anonymous struct/union/enum reached through a typedef is named
        by the innermost such typedef (``pte_t``, ``sockptr_t``).
        """
        cached = self._target.get(type_id)
        if cached is not None:
            return cached
        depth = 0
        tid = type_id
        typedef_name = ""
        for _ in range(_MAX_CHAIN * 4):
            if tid == 0:
                res = (depth, "void")
                break
            t, _o, name_off, info, st = self.t.record(tid)
            kind = (info >> 24) & 0x1F
            if kind in _SKIP_KINDS:
                if kind == KIND_TYPEDEF and name_off:
                    typedef_name = t.string(name_off)
                tid = st
                continue
            if kind == KIND_PTR:
                depth += 1
                typedef_name = ""
                tid = st
                continue
            if kind == KIND_FUNC_PROTO:
                res = (depth, self._proto_spelling(tid, 0, ""))
            elif kind == KIND_ARRAY:
                res = (depth, self.display(tid))
            elif not name_off and typedef_name and kind in (
                KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64
            ):
                res = (depth, typedef_name)
            else:
                res = (depth, self._base_name(kind, info, t.string(name_off) if name_off else ""))
            break
        else:
            raise BtfError(f"{self.t.module}: BTF pointer chain too deep at id {type_id} (cycle?)")
        self._target[type_id] = res
        return res


class BtfIndex:
    """Function-prototype index over one or more BTF blobs.

    Build with :func:`parse_btf` or :func:`load_kernel_btf`.

    Attributes:
        modules: names of the BTF blobs merged in, in load order
            (``("vmlinux", "veth", ...)``).
        missing_modules: module names requested from :func:`load_kernel_btf`
            whose file did not exist under its root (empty otherwise).

    ``len(index)`` is the number of distinct FUNC names. When a name occurs
    more than once (static functions of the same name in different
    translation units, or in vmlinux and a module), the first occurrence in
    load order wins (vmlinux before modules; lowest type id first).
    Function records are resolved on first lookup and cached; lookups may
    raise :class:`BtfError` if the referenced type records are corrupt.
    """

    def __init__(self, tables: list[_Table], missing_modules: tuple[str, ...] = ()):
        self._tables = tables
        self._resolvers = {id(t): _Resolver(t) for t in tables}
        self._funcs: dict[str, tuple[_Table, int]] = {}
        for t in tables:
            funcs = self._funcs
            string = t.string
            for name_off, tid in t.func_ids:
                name = string(name_off)
                if name not in funcs:
                    funcs[name] = (t, tid)
        self._cache: dict[str, BtfFunction] = {}
        self.modules: tuple[str, ...] = tuple(t.module for t in tables)
        self.missing_modules: tuple[str, ...] = tuple(missing_modules)
        self._composites: dict[str, tuple[_Table, int]] | None = None

    def _root(self) -> _Table:
        t = self._tables[0]
        while t.base is not None:
            t = t.base
        return t

    def _lookup_key(self, name: str) -> str | None:
        if name in self._funcs:
            return name
        m = _CLONE_RE.match(name)
        if m and m.group(1) in self._funcs:
            return m.group(1)
        return None

    def function(self, name: str) -> BtfFunction | None:
        """Return the prototype of function ``name``, or None if absent.

        ``name`` is matched exactly; failing that, a compiler clone suffix
        (``"tcp_v4_rcv.isra.0"``, ``".constprop.0"``, ``".part.0"``,
        ``".cold"``, ...: everything from the first ``'.'``) is stripped and
        the plain name is tried. The returned ``BtfFunction.name`` is the
        BTF name (without suffix).

        Raises:
            BtfError: the FUNC's prototype references missing/corrupt types.
        """
        if not isinstance(name, str):
            return None
        key = self._lookup_key(name)
        if key is None:
            return None
        fn = self._cache.get(key)
        if fn is not None:
            return fn
        table, tid = self._funcs[key]
        res = self._resolvers[id(table)]
        _t, _off, _name_off, info, proto_id = table.record(tid)
        ret, raw_params, variadic = res.proto(proto_id)
        params = []
        for pname, ptype in raw_params:
            depth, target = res.target(ptype)
            params.append(BtfParam(pname, res.display(ptype), depth, target))
        enum = res.enum_values(res.proto_return_id(proto_id))
        fn = BtfFunction(key, tuple(params), ret, table.module, variadic, enum)
        self._cache[key] = fn
        return fn

    def func_type_id(self, name: str) -> tuple[str, int] | None:
        """Where the BTF ``FUNC`` record named exactly ``name`` lives: ``(blob, type id)``.

        ``blob`` is ``"vmlinux"`` or the module name; the type id is absolute
        (a module's split BTF numbers on after vmlinux's last id), i.e. what
        ``BPF_PROG_LOAD`` takes as ``attach_btf_id`` for fentry/fexit, with the
        module's BTF object as ``attach_btf_obj_fd``. None when absent (no clone
        suffix is stripped: a clone is a different function).
        """
        hit = self._funcs.get(name)
        return (hit[0].module, hit[1]) if hit else None

    def __contains__(self, name: object) -> bool:
        """True if :meth:`function` would find ``name`` (same suffix rule)."""
        return isinstance(name, str) and self._lookup_key(name) is not None

    def __len__(self) -> int:
        """Number of distinct FUNC names in the index."""
        return len(self._funcs)

    def names(self) -> list[str]:
        """All function names (unsorted, load order)."""
        return list(self._funcs)

    # -- data layout: struct/union members ----------------------------------
    def field(self, path: str) -> "BtfField | None":
        """Byte offset and size of a (possibly nested) struct member, from BTF.

        ``path`` is ``"TYPE.member[.member...]"``, with TYPE a named struct or
        union: ``"sk_buff.dev"``, ``"net_device.nd_net.net"``, ``"net.ns.inum"``.
        Members of anonymous structs/unions are found through them (in
        ``struct sk_buff``, ``dev`` sits in an anonymous union inside an
        anonymous struct); typedefs and qualifiers of intermediate members are
        followed (``possible_net_t nd_net``). TYPE is looked up in load order
        (vmlinux first, then modules); the first definition with members wins.

        Member records are ``struct btf_member {u32 name_off; u32 type; u32
        offset}``; ``offset`` is in bits, or, when the struct's kind_flag is
        set, ``bitfield_size << 24 | bit_offset`` (Documentation/bpf/btf.rst 2.2.4).

        Returns:
            a :class:`BtfField`, or None when TYPE or a member is not in BTF.

        Raises:
            BtfError: ``path`` has no member part, an intermediate member is not
                a struct/union, or the records are corrupt.
        """
        parts = path.split(".")
        if len(parts) < 2 or not all(parts):
            raise BtfError(f"field path {path!r} must look like TYPE.member[.member...]")
        found = self._composite(parts[0])
        if found is None:
            return None
        table, tid = found
        res = self._resolvers.get(id(table)) or _Resolver(table)
        bits, bitfield = 0, 0
        for i, name in enumerate(parts[1:], 1):
            cid = res._skip_modifiers(tid, 0)
            kind = (table.record(cid)[3] >> 24) & 0x1F if cid else 0
            if kind not in (KIND_STRUCT, KIND_UNION):
                raise BtfError(f"{'.'.join(parts[:i])} is {res.display(tid)}, not a struct or union: "
                               f"cannot take member {name!r} ({table.module} BTF)")
            hit = self._member(table, cid, name, 0)
            if hit is None:
                return None
            off, bitfield, tid = hit
            bits += off
        if bits % 8 and not bitfield:
            raise BtfError(f"{path}: member at bit offset {bits} is not byte aligned ({table.module} BTF)")
        return BtfField(path, bits // 8, self._size(res, tid), res.display(tid), table.module,
                        bitfield, bits % 8 if bitfield else 0)

    def _composite(self, name: str) -> "tuple[_Table, int] | None":
        """(table, type id) of the first complete struct/union called ``name``."""
        if self._composites is None:
            self._composites = {}
            for t in self._tables:
                for idx, off in enumerate(t.offsets):
                    name_off, info, _st = t._u32x3.unpack_from(t.data, off)
                    if name_off and (info >> 24) & 0x1F in (KIND_STRUCT, KIND_UNION):
                        key = t.string(name_off)
                        prev = self._composites.get(key)
                        # an earlier member-less record of the name yields to one with members
                        if prev is None or (info & 0xFFFF and not prev[0].record(prev[1])[3] & 0xFFFF):
                            self._composites[key] = (t, t.start_id + idx)
        return self._composites.get(name)

    def _member(self, table: _Table, type_id: int, name: str, depth: int) -> "tuple[int, int, int] | None":
        """(bit offset, bitfield bits, member type id) of ``name`` in a struct/union,
        searching anonymous struct/union members too."""
        if depth > _MAX_CHAIN:
            raise BtfError(f"{table.module}: anonymous members nested too deep at id {type_id}")
        t, off, _n, info, _st = table.record(type_id)
        kflag = info >> 31
        res = self._resolvers.get(id(table)) or _Resolver(table)
        anonymous = []
        for i in range(info & 0xFFFF):
            m_name, m_type, m_off = t._u32x3.unpack_from(t.data, off + 12 + 12 * i)
            bit_off, bf = (m_off & 0xFFFFFF, m_off >> 24) if kflag else (m_off, 0)
            if m_name and t.string(m_name) == name:
                return bit_off, bf, m_type
            if not m_name:
                anonymous.append((bit_off, m_type))
        for bit_off, m_type in anonymous:
            cid = res._skip_modifiers(m_type, 0)
            if cid and (table.record(cid)[3] >> 24) & 0x1F in (KIND_STRUCT, KIND_UNION):
                hit = self._member(table, cid, name, depth + 1)
                if hit is not None:
                    return bit_off + hit[0], hit[1], hit[2]
        return None

    def _size(self, res: "_Resolver", type_id: int) -> int:
        """Size in bytes of a type (pointers: 8, the x86-64/arm64 kernels callpath targets)."""
        for _ in range(_MAX_CHAIN):
            tid = res._skip_modifiers(type_id, 0)
            if tid == 0:
                return 0
            t, off, _n, info, st = res.t.record(tid)
            kind = (info >> 24) & 0x1F
            if kind == KIND_PTR:
                return 8
            if kind == KIND_ARRAY:
                elem, _idx, nelems = t._u32x3.unpack_from(t.data, off + 12)
                return nelems * self._size(res, elem)
            if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
                return st
            return 0
        raise BtfError(f"{res.t.module}: type chain too deep at id {type_id}")

    def __repr__(self) -> str:
        return f"<BtfIndex modules={self.modules!r} functions={len(self)}>"


def parse_btf(data: bytes, base: BtfIndex | None = None, module: str = "vmlinux") -> BtfIndex:
    """Parse one BTF blob into a :class:`BtfIndex` of its FUNC records.

    Args:
        data: raw BTF bytes (e.g. the contents of ``/sys/kernel/btf/vmlinux``);
            either byte order, detected from the magic.
        base: for split (module) BTF, the index holding the base vmlinux BTF.
            The blob is split off the base's root (vmlinux) BTF: its type ids
            start at the root's last id + 1 and its string offsets at the
            root's string-section length. ``None`` for a standalone blob.
        module: name recorded in ``BtfFunction.module`` / ``index.modules``.

    Returns:
        An index containing only this blob's FUNC records (types and strings
        of ``base`` are used to resolve them). ``load_kernel_btf`` merges
        vmlinux and modules into one index.

    Raises:
        BtfError: bad magic, unsupported version, truncated header/sections/
            type records, unknown kind, or byte order differing from ``base``.

    Cost: one pass over the type section, O(number of types); on a ~5.5 MB
    vmlinux BTF this takes a few hundred milliseconds in CPython.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse_btf expects bytes, got {type(data).__name__}")
    data = bytes(data)
    base_table = base._root() if base is not None else None
    return BtfIndex([_Table(data, base_table, module)])


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BtfError(f"cannot read BTF file {path}: {e.strerror or e}") from e


def load_kernel_btf(modules=(), root: str = "/sys/kernel/btf") -> BtfIndex:
    """Load vmlinux BTF plus the named modules' split BTF into one index.

    Args:
        modules: iterable of module names (files ``<root>/<name>``, e.g.
            ``"veth"``, ``"br_netfilter"``); a single string is accepted as
            one name. ``"vmlinux"`` and duplicates are ignored. Modules whose
            file does not exist are skipped and listed in
            ``index.missing_modules``.
        root: directory holding the BTF files (default ``/sys/kernel/btf``).

    Returns:
        A merged :class:`BtfIndex`; ``index.modules`` is ``("vmlinux", ...)``
        followed by the loaded modules in the order given.

    Raises:
        BtfError: ``<root>/vmlinux`` is missing or unreadable (the message
            names the path), a module name contains ``'/'``, an existing
            module file is unreadable, or any blob is malformed.
    """
    if isinstance(modules, str):
        modules = (modules,)
    vmlinux_path = os.path.join(root, "vmlinux")
    if not os.path.exists(vmlinux_path):
        raise BtfError(f"vmlinux BTF not found at {vmlinux_path} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
    vm = _Table(_read(vmlinux_path), None, "vmlinux")
    tables = [vm]
    missing: list[str] = []
    seen = {"vmlinux"}
    for name in modules:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise BtfError(f"invalid module name {name!r}")
        if name in seen:
            continue
        seen.add(name)
        path = os.path.join(root, name)
        if not os.path.exists(path):
            missing.append(name)
            continue
        tables.append(_Table(_read(path), vm, name))
    return BtfIndex(tables, tuple(missing))
