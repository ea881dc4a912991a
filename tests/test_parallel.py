"""Many traces, one side-by-side report (issue 11): a folder of traces from two kernels,
analysed in local processes and on a local Dask cluster, gives the same comparison."""

import json
from pathlib import Path

import pytest

from callpath.analysis.parallel import analyse_many, trace_files
from callpath.analysis.trace import TraceError, read_trace, write_trace
from callpath.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
SPEC = str(ROOT / "specs" / "macvlan-newlink-xmit.txt")
DROPPED = "macvlan_hash_lookup"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """``fleet/a.parquet`` (the fixture, 6.1) and ``fleet/b.parquet``: another kernel
    release where ``macvlan_hash_lookup`` is gone (absent from kallsyms, no events)."""
    d = tmp_path_factory.mktemp("fleet")
    t = read_trace(FIXTURE)
    write_trace(t, d / "a.parquet")
    ev = t.events[t.events["function"].astype(str) != DROPPED].reset_index(drop=True)
    meta = json.loads(json.dumps(t.meta))
    meta["kernel"] = "6.12.9-test-amd64"
    meta["events"] = len(ev)
    meta["plan"]["functions"][DROPPED].update(status="absent", symbol=None, func_id=None, reason="not in kallsyms")
    write_trace(type(t)(events=ev, meta=meta), d / "b.parquet")
    return d


def _verdicts(cmp):
    return {(p["number"], s["number"]): s["verdicts"] for p in cmp["paths"] for s in p["steps"]}


def _check(cmp, out: Path):
    assert cmp["kernels"] == ["6.1.0-56-amd64", "6.12.9-test-amd64"] and not cmp["failed"]
    v = _verdicts(cmp)
    assert v[("3", "3.1.2")] == {"6.1.0-56-amd64": "observed", "6.12.9-test-amd64": "absent"}
    changed = [k for p in cmp["paths"] for s in p["steps"] if s["changed"] for k in [(p["number"], s["number"])]]
    assert changed == [("3", "3.1.2")]
    assert any(d["function"] == DROPPED and "vanished" in d["kinds"] for d in cmp["drift"])
    for k in cmp["kernels"]:
        assert (out / cmp["reports"][k] / "report.json").is_file() and (out / cmp["reports"][k] / "report.html").is_file()
    md = (out / "report-kernels.md").read_text()
    assert "6.12.9-test-amd64" in md and "≠" in md


def test_folder_of_traces_in_local_processes(fleet, tmp_path, capsys):
    out = tmp_path / "local"
    assert main(["report", str(fleet), "--spec", SPEC, "--out", str(out), "--jobs", "2"]) == 0
    cmp = json.loads((out / "report-kernels.json").read_text())
    _check(cmp, out)
    assert "1 steps have different verdicts" in capsys.readouterr().out


def test_same_comparison_on_a_local_dask_cluster(fleet, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        assert main(["report", str(fleet / "a.parquet"), str(fleet / "b.parquet"), "--spec", SPEC, "--out", str(out),
                     "--scheduler", cluster.scheduler_address]) == 0
    cmp = json.loads((out / "report-kernels.json").read_text())
    _check(cmp, out)
    local, _ = analyse_many(trace_files([str(fleet)]), [SPEC], tmp_path / "inline", workers=1)
    assert _verdicts(local) == _verdicts(cmp) and local["drift"] == cmp["drift"]


def test_a_bad_trace_is_named_and_the_others_compared(fleet, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes((fleet / "a.parquet").read_bytes())
    (bad / "b.parquet").write_bytes((fleet / "b.parquet").read_bytes())
    (bad / "c.parquet").write_text("not parquet")
    cmp, reports = analyse_many(trace_files([str(bad)]), [SPEC], tmp_path / "out", workers=1)
    assert len(reports) == 2 and len(cmp["failed"]) == 1
    assert "not a Parquet trace" in next(iter(cmp["failed"].values()))


def test_trace_files_expands_folders(fleet, tmp_path):
    assert [p.name for p in trace_files([str(fleet)])] == ["a.parquet", "b.parquet"]
    (tmp_path / "k1").mkdir()
    (tmp_path / "k1" / "trace.parquet").write_bytes((fleet / "a.parquet").read_bytes())
    assert trace_files([str(tmp_path)]) == [tmp_path / "k1" / "trace.parquet"]
    assert trace_files([str(tmp_path / "k1")]) == [tmp_path / "k1" / "trace.parquet"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="no trace in this folder"):
        trace_files([str(tmp_path / "empty")])
