"""The kernel struct fields callpath's BPF program reads, located in the target kernel's BTF.

bpf/callpath.bpf.c includes no kernel-internal header: struct layouts change
between kernels, and headers like ``linux/netdevice.h`` stop compiling with an
older bcc on a newer kernel. Instead each field's byte offset is taken from the
BTF of the kernel being probed (``/sys/kernel/btf/vmlinux``; inside the lab VM
that is the lab kernel's) and reaches the program as a cflag before it is
compiled (``-DCALLPATH_OFF_SKB_DEV=16``), the way libbpf's CO-RE relocates a
compiled program.

The plan records how each field was resolved (``plan.fields``)::

    {"sk_buff.dev": {"offset": 16, "size": 8, "type": "struct net_device *",
                     "source": "BTF vmlinux", "macro": "CALLPATH_OFF_SKB_DEV"}, ...}

Layouts cited (kernel sources): ``struct sk_buff`` (include/linux/skbuff.h;
``dev`` in an anonymous union since v4.13), ``struct net_device``
(include/linux/netdevice.h; ``nd_net`` is ``possible_net_t``, whose ``net``
member exists only with CONFIG_NET_NS), ``struct net`` (include/net/net_namespace.h;
``ns`` is ``struct ns_common``, include/linux/ns_common.h, ``inum`` the netns inode).
"""

from __future__ import annotations

from dataclasses import dataclass

from .btf import BtfError


class FieldError(RuntimeError):
    """A field the BPF program needs is missing from the kernel's BTF, or has an unexpected size."""


@dataclass(frozen=True)
class ProgramField:
    """One field read by bpf/callpath.bpf.c.

    Attributes:
        path: dotted BTF path, ``"sk_buff.dev"``.
        macro: the cflag carrying its byte offset (``-1`` when not read).
        size: bytes the program reads (it must equal the BTF size).
        required: True when a kernel with BTF but without this field is an error;
            False for the netns fields (absent without CONFIG_NET_NS: netns stays 0).
        purpose: what the program uses it for, for messages and the plan.
    """

    path: str
    macro: str
    size: int
    required: bool
    purpose: str


#: The fields bpf/callpath.bpf.c reads, in the order it reads them.
PROGRAM_FIELDS = (
    ProgramField("sk_buff.dev", "CALLPATH_OFF_SKB_DEV", 8, True, "the skb's device (events' ifindex/netns)"),
    ProgramField("net_device.ifindex", "CALLPATH_OFF_DEV_IFINDEX", 4, True, "events' ifindex"),
    ProgramField("net_device.nd_net.net", "CALLPATH_OFF_DEV_NET", 8, False, "the device's netns (events' netns)"),
    ProgramField("net.ns.inum", "CALLPATH_OFF_NET_INUM", 4, False, "the netns inode (events' netns)"),
)


def resolve_fields(btf, release: str, fields=PROGRAM_FIELDS) -> dict[str, dict]:
    """Locate the program's fields in ``btf``; the result goes into ``plan.fields``.

    Args:
        btf: a :class:`probes.btf.BtfIndex` of the target kernel, or None when it
            has no BTF: then no field is resolved (``offset`` -1) and the program
            reads none. Without BTF no argument is known to be an skb or a
            net_device either, so nothing would be read anyway.
        release: the target kernel release, for messages.
        fields: the fields to resolve (default: :data:`PROGRAM_FIELDS`).

    Returns:
        path -> ``{"offset": bytes or -1, "size": bytes, "type": C spelling,
        "source": "BTF vmlinux" | "not in BTF: ..." | "no BTF", "macro": cflag name}``.

    Raises:
        FieldError: a required field is not in the BTF, is a bitfield, or its
            size differs from what the program reads; the message names the
            field and the kernel.
    """
    out: dict[str, dict] = {}
    for f in fields:
        entry = {"offset": -1, "size": f.size, "type": None, "source": "no BTF", "macro": f.macro}
        if btf is not None:
            try:
                found = btf.field(f.path)
            except BtfError as err:
                raise FieldError(f"kernel {release}: cannot locate {f.path} in BTF: {err}") from None
            if found is None:
                if f.required:
                    raise FieldError(f"kernel {release}: field {f.path} ({f.purpose}) is not in the kernel's BTF; "
                                     "callpath's BPF program cannot read it on this kernel")
                entry["source"] = "not in BTF: not read"
            elif found.bitfield or found.size != f.size:
                what = f"a {found.bitfield}-bit bitfield" if found.bitfield else f"{found.size} bytes"
                raise FieldError(f"kernel {release}: field {f.path} is {what} ({found.type_name}) in BTF, "
                                 f"the BPF program reads {f.size} bytes")
            else:
                entry.update(offset=found.offset, size=found.size, type=found.type_name,
                             source=f"BTF {found.module}")
        out[f.path] = entry
    # the netns is read through two fields: one without the other is useless
    net = [f.path for f in fields if f.macro in ("CALLPATH_OFF_DEV_NET", "CALLPATH_OFF_NET_INUM")]
    if any(out[p]["offset"] < 0 for p in net if p in out):
        for p in net:
            if p in out and out[p]["offset"] >= 0:
                out[p]["offset"] = -1
                out[p]["source"] += " (not read: the other netns field is missing)"
    return out


def field_cflags(resolved: dict[str, dict], fields=PROGRAM_FIELDS) -> list[str]:
    """``-DMACRO=offset`` for every program field (``-1`` when unresolved or absent from ``resolved``)."""
    return [f"-D{f.macro}={int(resolved.get(f.path, {}).get('offset', -1))}" for f in fields]
