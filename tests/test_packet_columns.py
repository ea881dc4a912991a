"""Column-wise packet identity (analysis/packet_columns.py) equals the per-call loop of
analysis/packets.py (``COLUMNAR = False``): same calls, lifetimes and packet ids, in both
modes, on the real-kernel fixture, with damage, and on synthetic skb streams with frees,
clones, idle gaps, repeats and calls without an skb."""

from pathlib import Path

import numpy as np

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callpath.analysis import packets as P
from callpath.analysis.calltree import build_forest
from callpath.analysis.trace import events_from_rows, read_trace

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"


def both(forest, plan, **kw):
    P.COLUMNAR = True
    try:
        new = P.assign_packets(forest, plan, **kw)
        P.COLUMNAR = False
        try:
            ref = P.assign_packets(forest, plan, **kw)
        except IndexError:  # the loop fails when clones were born but no call got a packet
            assert not len(new.calls) and len(new.lifetimes)
            ref = None
    finally:
        P.COLUMNAR = True
    return new, ref


def same(new, ref):
    assert (new.mode, new.free_events, new.fork_events) == (ref.mode, ref.free_events, ref.fork_events)
    for a, b in ((new.calls, ref.calls), (new.lifetimes, ref.lifetimes)):
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        for c in b.columns:
            assert [str(v) for v in a[c].to_numpy()] == [str(v) for v in b[c].to_numpy()], c


@pytest.fixture(scope="module")
def trace():
    return read_trace(FIXTURE)


@pytest.mark.parametrize("mode", [None, "tracked", "address-window"])
def test_fixture_same_packets(trace, mode):
    forest = build_forest(trace.events)
    new, ref = both(forest, trace.meta["plan"]["functions"], mode=mode)
    same(new, ref)
    assert len(ref.calls) > 100


@pytest.mark.parametrize("window", [10_000, 200_000_000])
def test_damaged_fixture_same_packets(trace, window):
    rng = np.random.default_rng(5)
    ev = trace.events[rng.random(len(trace.events)) > 0.02]
    new, ref = both(build_forest(ev), trace.meta["plan"]["functions"], window_ns=window)
    same(new, ref)


FUNCS = ["xmit", "rcv", "inner", "kfree_skbmem", "skb_clone", "plain"]
PLAN = {"xmit": {"skb_arg": 1}, "rcv": {"skb_arg": 1}, "inner": {"skb_arg": 1}, "kfree_skbmem": {"skb_arg": 1},
        "skb_clone": {"skb_arg": 1}, "plain": {}}
# a call: (function, skb slot 0-3 or None, child calls, thread, idle gap before, ifindex)
call = st.recursive(
    st.tuples(st.sampled_from(FUNCS), st.sampled_from([None, 0, 1, 2, 3]), st.just(()), st.sampled_from([1, 2]),
              st.sampled_from([10, 1_000]), st.sampled_from([1, 2])),
    lambda kids: st.tuples(st.sampled_from(FUNCS), st.sampled_from([None, 0, 1, 2, 3]), st.lists(kids, max_size=3),
                           st.sampled_from([1, 2]), st.sampled_from([10, 1_000]), st.sampled_from([1, 2])),
    max_leaves=12)


def _rows(calls):
    rows, t = [], [1000]
    addrs = [0xffff888000001000 + 0x100 * i for i in range(4)]

    def emit(c, tid):
        fn, slot, kids, _, gap, ifi = c
        t[0] += gap
        skb = addrs[slot] if slot is not None else 0
        rows.append((len(rows), t[0], 0, FUNCS.index(fn), tid, tid, 0, skb, ifi, 7, 0, b"x"))
        for k in kids:
            emit(k, tid)
        t[0] += 10
        ret = addrs[(slot or 0) + 1 & 3] if fn == "skb_clone" else 0
        rows.append((len(rows), t[0], 1, FUNCS.index(fn), tid, tid, 0, 0, 0, 0, ret - (1 << 64) if ret else 0, b"x"))

    for c in calls:
        emit(c, c[3])
    return rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(call, max_size=8), st.sampled_from([None, "tracked", "address-window"]), st.sampled_from([500, 5_000]))
def test_synthetic_streams_same_packets(calls, mode, window):
    ev = events_from_rows(_rows(calls), dict(enumerate(FUNCS)))
    forest = build_forest(ev)
    new, ref = both(forest, PLAN, mode=mode, window_ns=window)
    if ref is not None:
        same(new, ref)
