"""Integration: boot the lab kernel, run `callpath verify` on the macvlan document with real traffic.

One boot for the module (about 4-5 minutes under QEMU TCG: boot, bcc compile,
workload). The verdicts asserted for Debian's 6.1 kernel were measured before
this test was written: macvlan_start_xmit, macvlan_hash_lookup and
dev_forward_skb are traceable and run; macvlan_queue_xmit is not in 6.1's
kallsyms (inlined); netif_rx_ni no longer exists (removed in v5.18).
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
def lab_report(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab VM run needs root (QEMU with the host's files, modules)")
    try:
        kernel = labvm.choose_kernel()
        labvm.find_vng()
    except labvm.LabError as err:
        pytest.skip(f"no lab VM here: {err}")
    out = tmp_path_factory.mktemp("lab-macvlan")
    rc = main(["verify", SPEC, "--workload", "macvlan", "--packets", "20", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    return kernel, out, report


def steps_by_function(report, path_name):
    (path,) = [p for p in report["paths"] if p["name"].startswith(path_name)]
    return {s["function"]: s for s in path["steps"] if s["function"]}


def test_report_files_and_kernel(lab_report):
    kernel, out, report = lab_report
    assert report["kernel"] == kernel.release
    assert "lab VM" in report["where"]
    for name in ("report.md", "report.json", "trace.parquet", "trace.meta.json"):
        assert (out / name).stat().st_size > 0
    assert report["events"] > 0 and report["lost"] == 0
    assert not subprocess.run(["pgrep", "-x", "qemu-system-x86_64"], capture_output=True).stdout, "QEMU left running"


def test_macvlan_transmit_verdicts(lab_report):
    kernel, _, report = lab_report
    steps = steps_by_function(report, "macvlan_start_xmit")
    for fn in ("macvlan_start_xmit", "macvlan_hash_lookup", "dev_forward_skb"):
        assert steps[fn]["verdict"] == "observed", (fn, steps[fn])
        assert steps[fn]["count"] >= 20  # 20 unicast datagrams m0 -> m1 at least
    assert steps["macvlan_hash_lookup"]["evidence"][-2:] == ["macvlan_start_xmit", "macvlan_hash_lookup"]
    assert steps["netif_rx_ni"]["verdict"] == "absent"
    assert "netif_rx" in steps["netif_rx_ni"]["detail"]
    if kernel.release.startswith("6.1."):
        assert steps["macvlan_queue_xmit"]["verdict"] == "absent"


def test_latency_histograms(lab_report):
    _, out, report = lab_report
    lat = {r["function"]: r for r in report["latency"]}
    xmit = lat["macvlan_start_xmit"]
    assert xmit["count"] >= 40  # m0->m1 and m0->peer, 20 each
    assert 0 < xmit["p50_ns"] <= xmit["p90_ns"] <= xmit["p99_ns"] <= xmit["max_ns"]
    assert (out / xmit["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "rtnl_newlink" not in lat  # a netlink skb is not a packet


def test_link_creation_observed(lab_report):
    _, _, report = lab_report
    steps = steps_by_function(report, "macvlan_common_newlink")
    assert steps["macvlan_common_newlink"]["verdict"] == "observed"
    assert steps["register_netdevice"]["verdict"] == "observed"
