"""The C event struct (bpf/callpath_event.h) and its Python mirror agree byte for byte."""

import ctypes
import shutil
import subprocess

import pytest
from lab_headers import run_with_lab_headers

from callpath.bpf import EVENT_HEADER
from callpath.probes.event import CallpathEvent

FIELDS = [name for name, _ in CallpathEvent._fields_]


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_header_matches_ctypes_mirror(tmp_path):
    prog = tmp_path / "layout.c"
    prog.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{EVENT_HEADER}"\n'
        "int main(void) {\n"
        '  printf("size %zu\\n", sizeof(struct callpath_event));\n'
        + "".join(f'  printf("{f} %zu\\n", offsetof(struct callpath_event, {f}));\n' for f in FIELDS)
        + "  return 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-o", str(exe), str(prog)], check=True)
    out = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines())
    assert int(out.pop("size")) == ctypes.sizeof(CallpathEvent) == 40
    for f in FIELDS:
        assert int(out[f]) == getattr(CallpathEvent, f).offset, f


# ------------------------------------------------- the program compiles for every lab kernel
_COMPILE = """
import sys
from bcc import BPF
from callpath.bpf import program_source
from callpath.probes.btf import load_kernel_btf
from callpath.probes.fields import resolve_fields
from callpath.probes.filters import Filters
from callpath.probes.cflags import bpf_cflags
fields = resolve_fields(load_kernel_btf(), "running kernel")  # real offsets: the reads are compiled in
# streaming; counting (the per-thread stack, bpf/callpath_stack.h), with path ids from one atomic
# counter and from per-CPU counters (kernels before 5.12); streaming filtered by ifindex
for aggregate, filters, extra in ((False, None, []), (True, None, []), (True, None, ["-DCP_ATOMIC_FETCH=0"]),
                                  (False, Filters(ifindex=1), [])):
    b = BPF(text=program_source().encode(), cflags=bpf_cflags(256, fields, aggregate, filters) + extra)
    for name in ("on_entry", "on_return", "entry_0_0", "ret_15_7"):
        b.load_func(name, BPF.KPROBE)  # the running kernel's verifier accepts them
    if aggregate or filters:
        b.load_func("on_sched_switch", BPF.RAW_TRACEPOINT)
    b.cleanup()
print("compiled and loaded")
"""


def _lab_releases():
    from callpath.probes.labvm import list_lab_kernels

    return [k.release for k in list_lab_kernels() if k.headers]


@pytest.mark.root
@pytest.mark.parametrize("release", _lab_releases() or ["none"])
def test_program_compiles_against_each_lab_kernels_headers(release, tmp_path):
    """bcc compiles bpf/callpath.bpf.c against each installed lab kernel's headers, on this
    machine, in a second (a lab VM run takes minutes). bcc reads /lib/modules/$(uname -r)/build:
    a private mount namespace shows it the lab kernel's headers there instead."""
    import os

    if release == "none":
        pytest.skip("no lab kernel with headers installed")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (a private mount namespace)")
    pytest.importorskip("bcc")
    if not os.access("/sys/kernel/btf/vmlinux", os.R_OK):
        pytest.skip("the running kernel has no BTF")
    script = tmp_path / "compile.py"
    script.write_text(_COMPILE)
    res = run_with_lab_headers(tmp_path, release, script)
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == 0 and "compiled and loaded" in res.stdout, (release, errors or res.stderr[-2000:])


def test_program_source_pastes_the_folders_own_headers_and_keeps_the_kernels(tmp_path, monkeypatch):
    import callpath.bpf as bpfdir

    text = bpfdir.program_source()
    assert '#include "callpath_stack.h"' not in text and '#include "callpath_event.h"' not in text
    assert "struct tstate *thread_state(u64 sp)" in text and "struct callpath_event {" in text
    assert "#include <uapi/linux/ptrace.h>" in text
    # a cycle is refused, not followed for ever
    (tmp_path / "a.h").write_text('#include "b.h"\n')
    (tmp_path / "b.h").write_text('#include "a.h"\n')
    monkeypatch.setattr(bpfdir, "BPF_DIR", tmp_path)
    with pytest.raises(ValueError, match="includes itself"):
        bpfdir.program_source(tmp_path / "a.h")
