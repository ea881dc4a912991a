"""Integration (lab VM): inlined steps probed at their inline sites on Debian's 6.1 kernel.

The boot shared with tests/test_lab.py (``lab61_verify`` in tests/conftest.py):
`callpath verify` on every shipped document, pinned to Debian's 6.1.0 lab kernel, with the DWARF `make setup` fetched
(`tools/fetch-debuginfo.sh RELEASE`, cached in /var/cache/callpath/debuginfo).
On 6.1 the compiler inlined `macvlan_queue_xmit` into `macvlan_start_xmit`
(`macvlan_start_xmit+33`, as `perf probe -D` says) and `ipvlan_xmit_mode_l3`
into `ipvlan_queue_xmit` (`ipvlan_queue_xmit+126`): both must come out
`observed` at their inline sites under the workloads' traffic, with no
duration anywhere. About 6 minutes under TCG.
"""


import pytest

from callpath.probes.debuginfo import cache_root

pytestmark = pytest.mark.lab



@pytest.fixture(scope="module")
def lab_report(lab61_verify):
    """The shared 6.1 run of every shipped document (tests/conftest.py), when DWARF is cached."""
    kernel, _out, report = lab61_verify
    if not list(cache_root(kernel.release).glob("usr/lib/debug/lib/modules/*/kernel/drivers/net/macvlan.ko")):
        pytest.skip(f"no DWARF for {kernel.release}: run `tools/fetch-debuginfo.sh {kernel.release}` (make setup does)")
    return report


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
