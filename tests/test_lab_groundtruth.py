"""Ground truth: callpath's verdicts against ftrace function_graph, same traffic, same boot.

The document (tests/fixtures/docs/bridge-forward.txt) is a path through the
Linux bridge, a module callpath has no workload for; the traffic is a user
command (tests/fixtures/docs/bridge_traffic.py). One lab boot runs:

A. ``callpath record DOC --load-modules -- graph_around.py OUT br_handle_frame bridge_traffic.py``:
   callpath loads bridge.ko (found through the module index, not a list) and
   probes; the user command records function_graph under ``br_handle_frame``
   while the traffic flows;
B. ``callpath record DOC -- bridge_traffic.py`` without ``--load-modules``:
   the bridge module arrives with the traffic (callpath unloaded it after A),
   and its functions are attached when it does.

On the host: every documented function that function_graph shows running
under its documented caller must be ``observed`` by callpath in A (for
``dev_queue_xmit``, an inline wrapper on 6.1, the successor's verdict is
accepted), and nothing in B may be ``absent``.
"""

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from callpath.analysis.ftrace_text import ENTRY, parse_function_graph
from callpath.analysis.readers import read_spec
from callpath.analysis.report import build_report
from callpath.analysis.trace import read_trace
from callpath.probes import labvm, modindex

pytestmark = pytest.mark.lab

DOCS = Path(__file__).parent / "fixtures" / "docs"
DOC = DOCS / "bridge-forward.txt"
OBSERVED = ("observed", "observed-out-of-order")
#: documented functions that are inline wrappers on Debian's 6.1: their successor's verdict counts
WRAPPERS = {"dev_queue_xmit": "__dev_queue_xmit"}


def graph_calls_under(text: str, chain: list[str]) -> int:
    """Calls of ``chain[-1]`` that function_graph shows inside ``chain[:-1]`` (in nesting
    order, through other frames)."""
    rows, _stats = parse_function_graph(text)
    stacks: dict[int, list[str]] = {}
    n = 0
    for r in rows:
        cpu, kind, name = r[6], r[2], r[-1]
        st = stacks.setdefault(cpu, [])
        if kind == ENTRY:
            if name == chain[-1]:
                it = iter(st)
                if all(any(a == want for a in it) for want in chain[:-1]):
                    n += 1
            st.append(name)
        elif st:
            st.pop()
    return n


def documented_chains(spec) -> dict[str, list[str]]:
    out = {}
    for path in spec.paths:
        for step in path.steps:
            chain, s = [], step
            while s is not None:
                chain.insert(0, s.function)
                s = path.step(s.parent) if s.parent else None
            out[step.function] = chain
    return out


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab VM needs root")
    try:
        kernel = [k for k in labvm.list_lab_kernels() if k.headers and k.release.startswith("6.1.")][0]
        labvm.find_vng()
    except (IndexError, labvm.LabError) as err:
        pytest.skip(f"no lab VM here: {err}")
    # the guest reads the host's module index cache; building it under TCG takes minutes
    stage = tmp_path_factory.mktemp("groundtruth")
    handover = modindex.write_for_guest(modindex.load_index(kernel.release), stage / "modindex.json")
    py = sys.executable
    traffic = [py, str(DOCS / "bridge_traffic.py"), "--packets", "50"]
    rec = [py, "-u", "-m", "callpath", "record", str(DOC)]
    job = [
        "set -e",
        handover,
        "echo groundtruth: A start $(date +%s)",
        shlex.join([*rec, "--load-modules", "--out", str(stage / "a.parquet"), "--",
                    py, str(DOCS / "graph_around.py"), str(stage / "graph.txt"), "br_handle_frame", *traffic]),
        "echo groundtruth: B start $(date +%s)",
        # the bridge module loads when the script creates the bridge; probes attach on its
        # arrival, which under TCG takes a few seconds: the script waits before sending
        shlex.join([*rec, "--out", str(stage / "b.parquet"), "--", *traffic, "--settle", "8"]),
        "echo groundtruth: end $(date +%s)",
    ]
    (stage / "job.sh").write_text("\n".join(job) + "\n")
    lines = []
    rc = labvm.run_in_lab(kernel, ["/bin/sh", str(stage / "job.sh")], [stage], progress=lines.append, timeout_s=1500)
    (stage / "lab.log").write_text("\n".join(lines))
    assert rc == 0, "\n".join(lines[-30:])
    spec = read_spec(DOC)
    reports = {k: build_report(read_trace(stage / f"{k}.parquet"), [spec], stage / k) for k in "ab"}
    return spec, (stage / "graph.txt").read_text(errors="replace"), reports, stage


def _steps(report):
    (path,) = report["paths"]
    return {s["function"]: s for s in path["steps"]}


def test_verdicts_agree_with_function_graph(lab_run):
    spec, graph, reports, stage = lab_run
    steps = _steps(reports["a"])
    table = []
    for fn, chain in documented_chains(spec).items():
        shown = WRAPPERS.get(fn, fn)
        calls = graph_calls_under(graph, chain[:-1] + [shown])
        s = steps[fn]
        table.append((fn, s["verdict"], s["count"], shown, calls))
        if calls:
            ok = OBSERVED + (("successor-observed",) if fn in WRAPPERS else ())
            assert s["verdict"] in ok, f"{fn}: function_graph shows {calls} calls of {shown}, callpath says {s}"
    (stage / "table.json").write_text(json.dumps(table, indent=1))
    print("\n".join(f"{a:<24} {b:<22} {c:>4}   {d:<20} {e:>4}" for a, b, c, d, e in table))
    assert any(t[4] for t in table), "function_graph saw no bridge forwarding at all"


def test_module_arriving_with_the_traffic_is_probed(lab_run):
    _spec, _graph, reports, stage = lab_run
    steps = _steps(reports["b"])
    meta = json.loads((stage / "b.meta.json").read_text()) if (stage / "b.meta.json").exists() else {}
    assert all(s["verdict"] != "absent" for f, s in steps.items() if f not in WRAPPERS), steps
    (stage / "late.json").write_text(json.dumps({f: [s["verdict"], s["count"], s["detail"]] for f, s in steps.items()},
                                                indent=1) + "\n" + json.dumps(meta.get("modules_arrived")))
    assert steps["br_handle_frame"]["verdict"] in OBSERVED + ("module-not-loaded",)
