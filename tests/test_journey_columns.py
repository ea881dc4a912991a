"""Column-wise journeys (analysis/journey_columns.py) equal the per-packet loop they
replaced (kept in tests/reference_journeys.py): visits, journeys and report blocks, on
the real-kernel fixture, with damage, and with packet ids shuffled."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_journeys
from callpath.analysis import journeys
from callpath.analysis.calltree import build_forest
from callpath.analysis.journey_columns import journeys_of
from callpath.analysis.packets import assign_packets
from callpath.analysis.readers import read_specs
from callpath.analysis.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"


def same_frame(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for c in b.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if c == "latency_ns":
            np.testing.assert_array_equal(x.astype(float), y.astype(float))
        else:
            assert [str(v) for v in x] == [str(v) for v in y], c


def check(trace_events, plan):
    specs = read_specs([str(ROOT / "specs")])
    forest = build_forest(trace_events)
    packets = assign_packets(forest, plan)
    n = 0
    for spec in specs:
        for path in spec.paths:
            matched = journeys.matched_frames(path, forest, plan)
            for m in (matched, None):
                new = journeys.path_journeys(path, plan, packets, m)
                ref = reference_journeys.path_journeys(path, plan, packets, m)
                same_frame(new.journeys, ref.journeys)
                same_frame(new.visits, ref.visits)
                n += len(ref.journeys)
    new = journeys.report_blocks(specs, forest, plan, packets)
    ref = reference_journeys.report_blocks(specs, forest, plan, packets)
    assert [b for _, b in new] == [b for _, b in ref]
    return n


@pytest.fixture(scope="module")
def trace():
    return read_trace(FIXTURE)


def test_fixture_journeys_identical(trace):
    assert check(trace.events, trace.meta["plan"]["functions"]) > 20


def test_damaged_fixture_journeys_identical(trace):
    rng = np.random.default_rng(3)
    ev = trace.events[rng.random(len(trace.events)) > 0.03]
    check(ev, trace.meta["plan"]["functions"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["1", "1.1", "1.2", "1.2.1", "2"])), max_size=40),
       st.sampled_from([["1.2.1"], ["1.1", "1.2.1"], []]), st.integers(1, 5))
def test_runs_and_classification_like_the_loop(visits, exits, n_steps):
    calls = pd.DataFrame({"frame": np.arange(len(visits)), "packet": [p for p, _ in visits],
                          "function": [f"f{s}" for _, s in visits], "start_ns": np.arange(len(visits)) * 10,
                          "tid": [i % 3 for i in range(len(visits))], "cpu": [i % 2 for i in range(len(visits))],
                          "ifindex": 1, "netns": 2, "via": "arg"})
    calls = calls.sort_values(["packet", "start_ns"], kind="stable")
    steps = {int(f): s for f, (_, s) in enumerate(visits)}
    if not len(calls):
        return
    v, j = journeys_of(calls, calls["frame"].map(steps).to_numpy(), "1", exits, n_steps)
    # the loop, inline (tests/reference_journeys.py minus the pandas around it)
    want = []
    for packet, g in calls.groupby("packet", sort=True):
        runs = []
        for r in g.to_dict("records"):
            r["step"] = steps[r["frame"]]
            if not runs or r["step"] == "1":
                runs.append([])
            runs[-1].append(r)
        run = max(runs, key=lambda rr: (len({x["step"] for x in rr}), -runs.index(rr)))
        distinct = {x["step"] for x in run}
        first, last = run[0], run[-1]
        if distinct == {"1"} and n_steps > 1:
            status = "entry-only"
        elif first["step"] == "1" and last["step"] in exits:
            status = "complete"
        else:
            status = "partial"
        want.append((packet, status, first["step"], last["step"], len(distinct), [x["frame"] for x in run]))
    got = [(p, s, a, b, d, v[v["packet"] == p]["frame"].tolist())
           for p, s, a, b, d in zip(j["packet"], j["status"], j["first_step"], j["last_step"], j["steps"])]
    assert got == want
