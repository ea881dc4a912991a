"""Integration (lab VM): inlined steps probed at their inline sites on Debian's 6.1 kernel.

One boot: `callpath verify` on every shipped document with every workload,
pinned to Debian's 6.1.0 lab kernel, with the DWARF `make setup` fetched
(`tools/fetch-debuginfo.sh RELEASE`, cached in /var/cache/callpath/debuginfo).
On 6.1 the compiler inlined `macvlan_queue_xmit` into `macvlan_start_xmit`
(`macvlan_start_xmit+33`, as `perf probe -D` says) and `ipvlan_xmit_mode_l3`
into `ipvlan_queue_xmit` (`ipvlan_queue_xmit+126`): both must come out
`observed` at their inline sites under the workloads' traffic, with no
duration anywhere. About 6 minutes under TCG.
"""

import json
import os

import pytest

from callpath.cli import main
from callpath.probes import labvm
from callpath.probes.debuginfo import cache_root

pytestmark = pytest.mark.lab

SPECS_DIR = os.path.join(os.path.dirname(__file__), "..", "specs")


@pytest.fixture(scope="module")
def lab_report(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab VM run needs root")
    try:
        kernels = [k for k in labvm.list_lab_kernels() if k.headers and k.release.startswith("6.1.")]
        labvm.find_vng()
    except labvm.LabError as err:
        pytest.skip(f"no lab VM here: {err}")
    if not kernels:
        pytest.skip("Debian's 6.1 lab kernel is not installed")
    kernel = kernels[0]
    if not list(cache_root(kernel.release).glob("usr/lib/debug/lib/modules/*/kernel/drivers/net/macvlan.ko")):
        pytest.skip(f"no DWARF for {kernel.release}: run `tools/fetch-debuginfo.sh {kernel.release}` (make setup does)")
    out = tmp_path_factory.mktemp("lab-inline")
    rc = main(["verify", SPECS_DIR, "--packets", "20", "--kernel", kernel.release, "--out", str(out)])
    assert rc == 0
    return json.loads((out / "report.json").read_text())


def _steps(report, function):
    return [s for p in report["paths"] for s in p["steps"] if s["function"] == function]


@pytest.mark.parametrize("function,site", [("macvlan_queue_xmit", "macvlan_start_xmit+33"),
                                           ("ipvlan_xmit_mode_l3", "ipvlan_queue_xmit+")])
def test_inlined_step_observed_at_its_inline_site(lab_report, function, site):
    fp = lab_report["plan"][function]
    assert fp["status"] == "inlined", fp
    steps = _steps(lab_report, function)
    assert steps and any(s["verdict"] == "observed" for s in steps), steps
    for s in steps:
        if s["verdict"] == "observed":
            assert s["mechanism"] == "inline-site" and s["mean_ns"] is None
            assert "inline site " + site in s["detail"] and "no return" in s["detail"]


def test_inline_sites_never_get_a_duration(lab_report):
    rows = {r["function"]: r for r in lab_report["inline_sites"]}
    assert rows["macvlan_queue_xmit"]["count"] > 0 and rows["macvlan_queue_xmit"]["latency"] == "inline site: no return"
    latency = {r["function"] for r in lab_report["latency"]}
    assert not latency & set(rows)
