"""Shared fixtures: one lab boot serves every lab test that needs `verify` on Debian's 6.1.

Booting the lab VM and compiling the BPF program under QEMU TCG costs minutes,
so `tests/test_lab.py` (transmit, link creation, rx_handler, NAPI, boot graph)
and `tests/test_lab_inline.py` (inline sites) share one `callpath verify` of
every shipped document, pinned to Debian's 6.1 kernel, whose verdicts they
assert (measured on 6.1.0-56-amd64).
"""

import json
import os

import pytest

SPECS_DIR = os.path.join(os.path.dirname(__file__), "..", "specs")


def lab_kernel_61():
    """Debian's 6.1 lab kernel with headers, or skip (not root, no vng, not installed)."""
    from callpath.probes import labvm

    if os.geteuid() != 0:
        pytest.skip("the lab VM run needs root (QEMU with the host's files, modules)")
    try:
        labvm.find_vng()
    except labvm.LabError as err:
        pytest.skip(f"no lab VM here: {err}")
    pinned = [k for k in labvm.list_lab_kernels() if k.headers and k.release.startswith("6.1.")]
    if not pinned:
        pytest.skip("Debian's 6.1 lab kernel with headers is not installed (make setup installs it)")
    return pinned[0]


@pytest.fixture(scope="session")
def lab61_verify(tmp_path_factory):
    """``(kernel, out_dir, report)`` of ``callpath verify specs/ --packets 20`` on 6.1 in the lab VM."""
    from callpath.cli import main

    kernel = lab_kernel_61()
    out = tmp_path_factory.mktemp("lab61-verify")
    rc = main(["verify", SPECS_DIR, "--packets", "20", "--kernel", kernel.release, "--out", str(out)])
    assert rc == 0
    return kernel, out, json.loads((out / "report.json").read_text())
