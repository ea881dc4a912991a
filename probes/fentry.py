"""Load and attach fentry/fexit programs, module functions included, with bcc's compiled code.

bcc 0.26 (Debian 12) attaches fentry/fexit only to vmlinux functions: it looks
the target up in vmlinux BTF by the program's name (``kfunc__NAME``). Most
functions callpath's documents name live in modules (veth, macvlan, bridge...),
whose BTF is split BTF under ``/sys/kernel/btf/MODULE``. So callpath lets bcc
compile (and create the maps), takes each handler's instructions with
``BPF.dump_func`` (map references already resolved to map fds), and loads them
itself with the ``bpf(2)`` syscall:

* ``BPF_PROG_LOAD`` with ``prog_type`` TRACING, ``expected_attach_type``
  ``BPF_TRACE_FENTRY``/``BPF_TRACE_FEXIT``, ``attach_btf_id`` (the FUNC's
  absolute BTF type id, :meth:`probes.btf.BtfIndex.func_type_id`) and, for a
  module, ``attach_btf_obj_fd`` (the module's BTF object, found by name with
  ``BPF_BTF_GET_NEXT_ID``/``BPF_BTF_GET_FD_BY_ID``/``BPF_OBJ_GET_INFO_BY_FD``);
  module BTF targets need kernel 5.11+;
* ``BPF_RAW_TRACEPOINT_OPEN`` with the program fd: the link that attaches it
  (the same call libbpf and bcc's ``bpf_attach_kfunc`` make).

Everything is file descriptors owned by this process: closing them detaches,
and the kernel closes them when the process dies, even by SIGKILL, so nothing
is left behind. Layouts are the kernel's stable uapi (``union bpf_attr``,
include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import os
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_GET_FD_BY_ID = 19
BPF_BTF_GET_NEXT_ID = 23
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class FentryError(OSError):
    """A fentry/fexit program could not be loaded or attached; ``str()`` is one line."""


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise FentryError(err, os.strerror(err))
    return ret


def module_btf_fds() -> dict[str, int]:
    """Open every kernel BTF object: name (``vmlinux`` or module) -> fd. The caller closes them."""
    out: dict[str, int] = {}
    start = 0
    while True:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, start)
        try:
            _bpf(BPF_BTF_GET_NEXT_ID, attr)
        except FentryError:
            break  # ENOENT: no more
        start = struct.unpack_from("<I", attr, 4)[0]
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, start)
        try:
            fd = _bpf(BPF_BTF_GET_FD_BY_ID, attr)
        except FentryError:
            continue  # went away meanwhile
        name = ctypes.create_string_buffer(64)
        info = ctypes.create_string_buffer(32)
        struct.pack_into("<QII", info, 16, ctypes.addressof(name), ctypes.sizeof(name), 0)
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<IIQ", attr, 0, fd, ctypes.sizeof(info), ctypes.addressof(info))
        try:
            _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        except FentryError:
            os.close(fd)
            continue
        kernel_btf = struct.unpack_from("<I", info, 28)[0]
        label = name.value.decode(errors="replace")
        if kernel_btf and label and label not in out:
            out[label] = fd
        else:
            os.close(fd)
    return out


def load_tracing(insns: bytes, name: str, exit_: bool, btf_id: int, btf_obj_fd: int = 0) -> int:
    """Load one fentry (or fexit, ``exit_``) program; returns its fd.

    Args:
        insns: the program's instructions (``BPF.dump_func``), 8 bytes each.
        name: program name (first 15 bytes kept), shown by bpftool.
        btf_id: absolute BTF type id of the target FUNC.
        btf_obj_fd: fd of the module's BTF object, 0 for vmlinux.

    Raises:
        FentryError: the kernel refused it; the message ends with the verifier's last line.
    """
    license_ = ctypes.create_string_buffer(b"GPL")
    code = ctypes.create_string_buffer(insns, len(insns))

    def attempt(log_level: int, log: ctypes.Array | None) -> int:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIQQII", attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(license_), log_level, ctypes.sizeof(log) if log else 0)
        struct.pack_into("<Q", attr, 32, ctypes.addressof(log) if log else 0)
        attr[48:48 + 15] = name.encode()[:15].ljust(15, b"\0")
        struct.pack_into("<I", attr, 68, BPF_TRACE_FEXIT if exit_ else BPF_TRACE_FENTRY)
        struct.pack_into("<II", attr, 108, btf_id, btf_obj_fd)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0, None)
    except FentryError as err:
        log = ctypes.create_string_buffer(1 << 16)
        try:
            fd = attempt(1, log)  # only to learn why; a success here is kept
            return fd
        except FentryError:
            # the verifier's reason is the last line before its statistics ("processed N insns ...")
            lines = [x for x in log.value.decode(errors="replace").splitlines()
                     if x.strip() and not x.startswith(("processed ", "verification time"))]
            raise FentryError(err.errno, f"{err.strerror}" + (f": {lines[-1]}" if lines else "")) from None


def attach_tracing(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit program (``BPF_RAW_TRACEPOINT_OPEN``, name NULL); returns the link fd."""
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, 0, prog_fd)
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


class FentryLinks:
    """The fentry/fexit programs and links of one recording; ``close()`` detaches them all.

    Usage::

        links = FentryLinks()
        links.attach(bpf, "fentry_3", "fexit_3", btf_id=1234, module="veth")  # raises FentryError
        ...
        links.close()
    """

    def __init__(self):
        self.fds: list[int] = []
        self._btf: dict[str, int] | None = None

    def btf_fd(self, module: str) -> int:
        if module == "vmlinux":
            return 0
        if self._btf is None or module not in self._btf:
            for fd in (self._btf or {}).values():
                os.close(fd)
            self._btf = module_btf_fds()
        if module not in self._btf:
            raise FentryError(2, f"no BTF object for module {module} (kernel without CONFIG_DEBUG_INFO_BTF_MODULES?)")
        return self._btf[module]

    def attach(self, bpf, entry: str, exit_: str, btf_id: int, module: str) -> None:
        """Load and attach the pair; on failure nothing of the pair stays attached."""
        obj = self.btf_fd(module)
        mine: list[int] = []
        try:
            for fn, is_exit in ((entry, False), (exit_, True)):
                prog = load_tracing(bpf.dump_func(fn.encode()), fn, is_exit, btf_id, obj)
                mine.append(prog)
                mine.append(attach_tracing(prog))
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        self.fds.extend(mine)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for fd in (self._btf or {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._btf = None
