"""Integration: the same document on Debian's 6.1 and 6.12 lab kernels, side by side.

One `callpath verify --kernel A --kernel B` run: one lab VM boot per kernel
(measured: 1540 s for both on the 2-core dev VM, most of it the guest
building the module index; the bcc compile is about 33 s per kernel). The
facts asserted were read from both kernels' BTF and headers before this test
was written:

* ``netif_rx_ni`` is absent on both (removed in v5.18, net/core/dev.c);
* ``macvlan_common_newlink`` has the same prototype on both,
  ``(src_net, dev, tb, data, extack)`` (include/linux/if_macvlan.h of 6.1 and
  6.12): its ``(dev, params, extack)`` form is newer than 6.12;
* the struct layouts differ: ``net_device.nd_net.net`` lies at byte 1280 on
  6.1 and 280 on 6.12 (struct net_device was reordered in between), so the BPF program
  must take its offsets from each kernel's BTF.
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
    assert (out / "report-kernels.md").read_text().count("| `netif_rx_ni` |") == 1
    # pgrep -x matches at most 15 characters of a name: match the command line instead
    qemu = subprocess.run(["pgrep", "-f", "qemu-system-x86_64 -name virtme-ng"], capture_output=True, text=True)
    assert qemu.returncode == 1 and not qemu.stdout, "QEMU left running"


def test_known_drift(kernels_report):
    old, new, out, cmp = kernels_report
    drift = {d["function"]: d for d in cmp["drift"]}
    assert drift["netif_rx_ni"]["kinds"] == ["absent everywhere"]
    assert "netif_rx" in drift["netif_rx_ni"]["changes"][0]
    assert "macvlan_common_newlink" not in drift  # same BTF prototype on 6.1 and 6.12
    plans = {k: json.loads((out / k / "report.json").read_text())["plan"] for k in (old, new)}
    for k in (old, new):
        assert plans[k]["macvlan_common_newlink"]["params"] == ["src_net", "dev", "tb", "data", "extack"]


def test_field_offsets_differ_and_events_carry_device(kernels_report):
    from callpath.analysis.trace import read_trace

    old, new, out, cmp = kernels_report
    nd_net = {k: cmp["fields"][k]["net_device.nd_net.net"]["offset"] for k in (old, new)}
    assert nd_net[old] != nd_net[new] and min(nd_net.values()) > 0
    for k in (old, new):
        ev = read_trace(out / k / "trace.parquet").events
        xmit = ev[(ev.function == "macvlan_start_xmit") & (ev.kind == 0)]
        assert len(xmit) >= 10
        assert (xmit.ifindex > 0).all() and (xmit.netns > 0).all()  # read at the BTF offsets
