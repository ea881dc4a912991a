"""The column-wise rebuild and matcher give exactly the frames and verdicts of the
per-event algorithm they replaced (kept in tests/reference_calltree.py and
tests/reference_conformance.py): on the real-kernel fixture and on synthetic
traces with every kind of defect (lost returns, orphan returns, threads cut by
the trace's end, timestamps that go backwards, idle-task and function_graph
thread keys)."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_calltree
import reference_conformance
from callpath.analysis.calltree import FRAME_COLUMNS, build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.outline import parse_outline
from callpath.analysis.readers import read_specs
from callpath.analysis.trace import concat_events, events_from_rows, read_trace

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
FUNCS = ["a", "b", "c", "d", "e"]
# nested steps, a caller restated, the same function twice among siblings (order check)
DOC = "1. a()\n1.1 b()\n1.1.1 c()\n1.2 d()\n1.2.1 b()\n1.3 c()\n1.4 b()\n2. e()\n2.1 a()\n2.1.1 d()\n"
COUNTERS = ("orphan_returns", "unterminated", "lost_returns", "open_at_end", "time_backwards", "time_backwards_first")


def assert_same_forest(new, ref):
    for attr in COUNTERS:
        assert getattr(new, attr) == getattr(ref, attr), attr
    a, b = new.frames, ref.frames
    assert len(a) == len(b)
    if not len(b):
        return
    for col in FRAME_COLUMNS:
        x, y = a[col], b[col]
        if col in ("end_ns", "duration_ns", "retval"):
            np.testing.assert_array_equal(x.to_numpy(dtype=float), pd.to_numeric(y).to_numpy(dtype=float), err_msg=col)
        elif col == "complete":
            assert x.to_numpy(dtype=bool).tolist() == y.to_numpy(dtype=bool).tolist()
        elif col in ("thread", "function", "comm", "mechanism"):
            assert x.astype(object).tolist() == y.astype(object).tolist(), col
        else:
            assert [int(v) for v in x] == [int(v) for v in y], col
    # the forest's helpers agree too
    for fid in range(0, len(b), max(1, len(b) // 50)):
        assert new.chain(fid) == ref.chain(fid) and new.ancestors(fid) == ref.ancestors(fid)
    for fn in set(b["function"]):
        assert new.frames_of(fn).tolist() == ref.frames_of(fn).tolist()


def assert_same_verdicts(specs, events, plan, failed=None):
    plain = events.astype({c: object for c in ("function", "comm", "mechanism")
                           if isinstance(events[c].dtype, pd.CategoricalDtype)})  # the reference wants strings
    new_forest, ref_forest = build_forest(events), reference_calltree.build_forest(plain)
    assert_same_forest(new_forest, ref_forest)
    new = check_specs(specs, new_forest, plan, failed)
    ref = reference_conformance.check_specs(specs, ref_forest, plan, failed)
    got = [asdict(s) for _, paths in new for p in paths for s in p.steps]
    want = [asdict(s) for _, paths in ref for p in paths for s in p.steps]
    assert got == want
    return got


def _plan():
    return {f: {"status": "traceable", "symbol": f, "func_id": i, "skb_arg": 1, "return_type": "int", "reason": "t"}
            for i, f in enumerate(FUNCS)}


def _events(rows, mechanism="kprobe"):
    return events_from_rows(rows, dict(enumerate(FUNCS)), mechanism=mechanism)


# -- hypothesis: arbitrary event soup (mostly broken threads) --------------------------------

event = st.tuples(st.sampled_from([(1, 0), (2, 0), (0, 0), (0, 1)]),  # (tid, cpu); tid 0 keyed per CPU
                  st.sampled_from([0, 1]), st.integers(0, len(FUNCS) - 1), st.integers(-300, 400))


def _rows(soup, t0=10_000):
    rows, t = [], t0
    for i, ((tid, cpu), kind, f, dt) in enumerate(soup):
        t += dt
        rows.append((i, t, kind, f, tid, tid, cpu, 0x1000 + f if kind == 0 else 0, f, 0, -f if kind else 0, b"x"))
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=60))
def test_event_soup_same_frames_and_verdicts(soup):
    assert_same_verdicts([parse_outline(DOC, "doc.txt")], _events(_rows(soup)), _plan())


# -- hypothesis: well-formed call trees on interleaved threads, then damaged --------------------

def _tree(draw, depth=0):
    f = draw(st.integers(0, len(FUNCS) - 1))
    kids = [] if depth >= 4 else [_tree(draw, depth + 1) for _ in range(draw(st.integers(0, 3 - depth // 2)))]
    return (f, kids)


def _flatten(tree, out):
    f, kids = tree
    out.append((0, f))
    for k in kids:
        _flatten(k, out)
    out.append((1, f))
    return out


@st.composite
def damaged_trace(draw):
    threads = [(1, 0), (2, 1), (0, 0), (0, 1), (3, 1)]
    streams = []
    for th in threads[: draw(st.integers(1, len(threads)))]:
        evs = []
        for _ in range(draw(st.integers(0, 3))):
            evs += _flatten(_tree(draw), [])
        streams.append([(th, k, f) for k, f in evs])
    merged = []
    while any(streams):  # interleave threads, each keeping its own order
        s = draw(st.sampled_from([s for s in streams if s]))
        merged.append(s.pop(0))
    damage = draw(st.sampled_from(["none", "lose-returns", "orphans", "cut", "backwards", "all"]))
    out = []
    for th, k, f in merged:
        if damage in ("lose-returns", "all") and k == 1 and draw(st.integers(0, 9)) == 0:
            continue  # kretprobe lost
        if damage in ("orphans", "all") and k == 0 and draw(st.integers(0, 12)) == 0:
            continue  # entry before probes attached
        dt = -draw(st.integers(1, 400)) if damage in ("backwards", "all") and draw(st.integers(0, 15)) == 0 else 100
        out.append((th, k, f, dt))
    if damage in ("cut", "all") and out:
        out = out[: draw(st.integers(0, len(out)))]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_trace())
def test_damaged_trees_same_frames_and_verdicts(soup):
    assert_same_verdicts([parse_outline(DOC, "doc.txt")], _events(_rows(soup)), _plan())


def test_mixed_mechanisms_and_unsorted_seq():
    rows = _rows([((1, 0), 0, 0, 100), ((0, 0), 0, 1, 100), ((1, 0), 1, 0, 100), ((0, 0), 1, 1, 100)])
    ev = concat_events(_events(rows), _events(rows, mechanism="function_graph"))
    ev = ev.sample(frac=1.0, random_state=1)  # arrival order comes from seq, not row order
    got = assert_same_verdicts([parse_outline(DOC, "doc.txt")], ev, _plan())
    assert build_forest(ev).frames["thread"].astype(str).tolist() == ["1", "0/0", "function_graph:1", "function_graph:0/0"]
    assert got


def test_empty_trace():
    assert_same_verdicts([parse_outline(DOC, "doc.txt")], _events([]), _plan())


# -- the real-kernel fixture ----------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_trace():
    return read_trace(FIXTURE)


def test_fixture_same_frames_and_verdicts(fixture_trace):
    plan = fixture_trace.meta["plan"]["functions"]
    got = assert_same_verdicts(read_specs([str(ROOT / "specs")]), fixture_trace.events, plan,
                               fixture_trace.meta.get("attach_failed"))
    assert sum(s["verdict"] == "observed" for s in got) > 10


def test_fixture_with_defects_same_frames_and_verdicts(fixture_trace):
    ev = fixture_trace.events
    rng = np.random.default_rng(7)
    drop = rng.random(len(ev)) < 0.01  # lose 1% of events: lost and orphan returns in many threads
    damaged = ev[~drop].copy()
    ts = damaged["ts_ns"].to_numpy().copy()
    ts[rng.random(len(ts)) < 0.002] -= 5_000  # some clocks run backwards
    damaged["ts_ns"] = ts
    damaged = damaged.iloc[: int(len(damaged) * 0.97)]  # cut at the end: frames still open
    forest = assert_same_verdicts(read_specs([str(ROOT / "specs")]), damaged, fixture_trace.meta["plan"]["functions"])
    assert forest
    f = build_forest(damaged)
    assert f.lost_returns and f.orphan_returns and f.open_at_end and f.time_backwards
