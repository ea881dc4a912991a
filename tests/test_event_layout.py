"""The C event struct (bpf/callpath_event.h) and its Python mirror agree byte for byte."""

import ctypes
import shutil
import subprocess

import pytest

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
    assert int(out.pop("size")) == ctypes.sizeof(CallpathEvent) == 72
    for f in FIELDS:
        assert int(out[f]) == getattr(CallpathEvent, f).offset, f
