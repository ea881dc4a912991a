"""Integration: the same document on every installed lab kernel, side by side.

One `callpath verify --kernel A --kernel B` run: one lab VM boot per kernel
(Debian's 6.1 and 6.12 after `make setup`; about 3 minutes each under QEMU TCG
with the macvlan workload). The drift asserted was read from the kernels'
sources and BTF before this test was written:

* ``netif_rx_ni`` is absent on both (removed in v5.18, net/core/dev.c);
* ``macvlan_common_newlink`` takes ``(src_net, dev, tb, data, extack)`` on 6.1
  and ``(dev, params, extack)`` on 6.12 (drivers/net/macvlan.c; the rtnl
  newlink parameters were gathered into ``struct rtnl_newlink_params`` in v6.12... v6.14).
"""

import json
import os
import subprocess

import pytest

from callpath.cli import main
from callpath.probes import labvm

pytestmark = pytest.mark.lab

SPEC = os.path.join(os.path.dirname(__file__), "..", "specs", "macvlan-newlink-xmit.txt")


@pytest.fixture(scope="module")
def kernels_report(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab VM run needs root (QEMU with the host's files, modules)")
    try:
        labvm.find_vng()
        kernels = labvm.choose_kernels(["all"])
    except labvm.LabError as err:
        pytest.skip(f"no lab VM here: {err}")
    old = [k for k in kernels if k.release.startswith("6.1.")]
    new = [k for k in kernels if k.release.startswith("6.12.")]
    if not old or not new:
        pytest.skip("needs Debian's 6.1 and 6.12 lab kernels with headers (make setup installs both)")
    out = tmp_path_factory.mktemp("lab-kernels")
    rc = main(["verify", SPEC, "--workload", "macvlan", "--packets", "10",
               "--kernel", old[0].release, "--kernel", new[0].release, "--out", str(out)])
    assert rc == 0
    return old[0].release, new[0].release, out, json.loads((out / "report-kernels.json").read_text())


def test_one_report_per_kernel_and_real_verdicts(kernels_report):
    old, new, out, cmp = kernels_report
    assert cmp["kernels"] == [old, new] and not cmp["failed"]
    for k in (old, new):
        report = json.loads((out / k / "report.json").read_text())
        assert report["kernel"] == k and report["events"] > 0
        steps = {s["function"]: s for p in report["paths"] for s in p["steps"] if s["function"]}
        assert steps["macvlan_start_xmit"]["verdict"] == "observed"
        assert steps["macvlan_common_newlink"]["verdict"] == "observed"
        # the BPF program read the fields at BTF offsets: events carry ifindex and netns
        fields = report["fields"]
        assert fields["sk_buff.dev"]["offset"] > 0 and fields["sk_buff.dev"]["source"] == "BTF vmlinux"
    assert (out / "report-kernels.md").read_text().count("| `macvlan_common_newlink` |") == 1
    assert not subprocess.run(["pgrep", "-x", "qemu-system-x86_64"], capture_output=True).stdout, "QEMU left running"


def test_known_drift(kernels_report):
    old, new, _, cmp = kernels_report
    drift = {d["function"]: d for d in cmp["drift"]}
    assert drift["netif_rx_ni"]["kinds"] == ["absent everywhere"]
    newlink = drift["macvlan_common_newlink"]
    assert "signature" in newlink["kinds"]
    assert newlink["per_kernel"][old]["signature"].startswith("(src_net, dev, tb, data, extack)")
    assert newlink["per_kernel"][new]["signature"].startswith("(dev, params, extack)")
