"""Streaming traces (probes/stream.py), record's metadata and lost status, the new CLI flags: no root, no lab."""

import json
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from callpath.analysis.trace import copy_trace, read_meta, read_trace
from callpath.probes import record as rec_mod
from callpath.probes.event import EVENT_DTYPE
from callpath.probes.plan import FunctionPlan, ProbePlan
from callpath.probes.stream import StreamError, TraceStream


def _batch(n, start_ts=0, fids=(1, 2, 5)):
    """Records of thread 7 (name: see COMMS), entries and returns in turn; an entry's ``arg`` is
    its skb address, a return's its return value: minus its index in the batch."""
    b = np.zeros(n, EVENT_DTYPE)
    b["ts_ns"] = np.arange(start_ts, start_ts + n)
    b["func_id"] = np.resize(np.array(fids, np.uint16), n)
    b["kind"] = np.arange(n) % 2
    b["tid"] = 7
    b["cpu"] = np.arange(n) % 2
    skb = np.uint64(0xFFFF888000000000) + np.arange(n, dtype=np.uint64)
    b["arg"] = np.where(b["kind"] == 0, skb, (-np.arange(n, dtype=np.int64)).view(np.uint64))
    b["ifindex"] = 3
    return b


#: What the Recorder's ``comms`` would give a TraceStream for the records of ``_batch``.
COMMS = {7: b"iperf3"}


def _plan():
    fps = {
        "a": FunctionPlan(name="a", status="traceable", func_id=1, probe="fentry"),
        "b": FunctionPlan(name="b", status="traceable", func_id=2, probe="kprobe"),
        "c": FunctionPlan(name="c", status="inlined", inline_sites=[{"func_id": 5, "probe": "x+3", "symbol": "x",
                                                                      "offset": 3}], probe="inline-site"),
    }
    return ProbePlan(release="6.1.0-test", mechanism="kprobe", functions=fps)


def test_many_batches_one_readable_trace(tmp_path):
    """Batches of odd sizes -> one trace: seq in arrival order, names and mechanisms from the plan,
    run-once rows after the probe events, metadata read back by read_trace, memory bounded."""
    plan = _plan()
    s = TraceStream(tmp_path / "t.parquet", names=plan.slot_names(), mechanism=plan, batch_rows=1000)
    s.comm_source = lambda: COMMS
    sizes = [1, 999, 1000, 2500, 7, 0, 3333]
    ts = 0
    for n in sizes:
        s(_batch(n, ts))
        ts += n
        assert s.peak_buffered <= 1000
    once = [([(0, 10, 0, 0, 1, 1, 0, 0, 0, 0, 0, b"swapper", "net_dev_init")], "function_graph")]
    meta = {"kernel": "6.1.0-test", "lost": 0, "lost_per_cpu": [0, 0], "mode": "events"}
    path = s.close(meta, once)
    total = sum(sizes)
    assert s.peak_buffered <= 1000 and s.row_groups >= total // 1000
    t = read_trace(path)
    ev = t.events
    assert len(ev) == total + 1 and t.meta["events"] == total + 1 and t.meta["lost_per_cpu"] == [0, 0]
    assert (ev["seq"].to_numpy() == np.arange(total + 1)).all()
    assert (ev["ts_ns"].to_numpy()[:total] == np.arange(total)).all()
    probe = ev.iloc[:total]
    by_fid = probe.groupby("func_id", observed=True).agg(function=("function", "first"), mech=("mechanism", "first"))
    assert by_fid.to_dict("index") == {1: {"function": "a", "mech": "fentry"}, 2: {"function": "b", "mech": "kprobe"},
                                       5: {"function": "c", "mech": "inline-site"}}
    assert set(probe["comm"].astype(str)) == {"iperf3"} and probe["retval"].iloc[1:5].tolist() == [0, -1, 0, -3]
    assert probe["skb"].iloc[1:3].tolist() == [0xFFFF888000000000, 0]  # an entry's arg; none on a return
    assert ev.iloc[-1][["function", "mechanism", "comm"]].tolist() == ["net_dev_init", "function_graph", "swapper"]
    assert json.loads((tmp_path / "t.meta.json").read_text())["events"] == total + 1
    # the row groups are bounded by batch_rows
    md = pq.ParquetFile(path).metadata
    assert max(md.row_group(i).num_rows for i in range(md.num_row_groups)) <= 1000


def test_stream_is_done_with_a_batch_when_it_returns(tmp_path):
    """TraceStream borrows batches: the recorder hands every batch over in one reused buffer,
    overwritten as soon as the sink returns; the trace still holds each batch as it was."""
    assert TraceStream.borrows_batches
    s = TraceStream(tmp_path / "t.parquet", names=_plan().slot_names(), mechanism=_plan(), batch_rows=500)
    buf = np.zeros(700, EVENT_DTYPE)
    ts = 0
    for n in (700, 3, 650):
        buf[:n] = _batch(n, ts)
        s(buf[:n])
        buf["ts_ns"] = 0  # the next read overwrites the buffer
        ts += n
    t = read_trace(s.close({"kernel": "6.1.0-test", "lost": 0, "mode": "events"}))
    assert (t.events["ts_ns"].to_numpy() == np.arange(ts)).all()


class _FakeRing:
    """RingReader stand-in: notes the buffer each read is asked to fill."""

    def __init__(self):
        self.outs = []

    def read(self, max_events, out=None):
        self.outs.append(out)
        return _batch(3) if out is None else out[:3]


@pytest.mark.parametrize("borrows", [True, False])
def test_recorder_reuses_one_batch_buffer_only_for_a_sink_that_borrows_batches(borrows):
    from callpath.probes.loader import Recorder

    got = []

    class Sink:
        borrows_batches = borrows

        def __call__(self, batch):
            got.append(batch)

    rec = Recorder(_plan(), sink=Sink(), batch_events=1000)
    rec._ring = _FakeRing()
    assert rec._drain() == 3 and rec._drain() == 3 and rec.events == 6
    outs = rec._ring.outs
    if borrows:
        assert outs[0] is outs[1] and len(outs[0]) == 1000 and outs[0].dtype == EVENT_DTYPE
        assert np.shares_memory(got[0], got[1])
    else:  # a sink that keeps its batches (a list in memory) gets a new array each time
        assert outs == [None, None] and not np.shares_memory(got[0], got[1])


def test_recorder_rows_split_arg_and_join_names_from_the_comms_map():
    """Without a sink the Recorder keeps tuples: an entry's arg is its skb, a return's its
    (signed) return value; names come from the comms BPF map, read when a new thread shows up,
    and from the map as it was at exit once the Recorder is done."""
    import ctypes
    from types import SimpleNamespace

    from callpath.probes.loader import Recorder

    reads = []

    class Map:
        def items(self):
            reads.append(1)
            return [(ctypes.c_uint32(7), SimpleNamespace(comm=b"iperf3"))]

    rec = Recorder(_plan())
    rec._bpf = {"comms": Map()}
    rec._ring = _FakeRing()
    assert rec._drain() == 3
    assert [r[7] for r in rec.rows] == [0xFFFF888000000000, 0, 0xFFFF888000000002]  # skb: entries only
    assert [r[10] for r in rec.rows] == [0, -1, 0]  # retval: returns only, signed
    assert [r[11] for r in rec.rows] == [b"iperf3"] * 3 and len(reads) == 1  # one map read per new thread
    rec._comms_final = {7: b"iperf3", 9: b"irq/5"}
    assert rec.comms() == {7: b"iperf3", 9: b"irq/5"}


def test_spool_keeps_memory_bounded_and_never_blocks_the_sink(tmp_path):
    """A stalled converter (SIGSTOP): the sink keeps appending to the spool on disk (never waits,
    so the ring buffer keeps draining); the converter holds at most batch_rows events; converted
    segments are deleted; the trace has every event in order."""
    import os
    import signal
    import time

    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, backlog_bytes=0)  # each segment to the converter
    s.segment_bytes = 150 * EVENT_DTYPE.itemsize  # a new segment every ~2 batches
    os.kill(s.converter_pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        for i in range(5):
            s(_batch(100, start_ts=i * 1000))
        assert time.monotonic() - t0 < 1  # not blocked by the stalled converter
        assert len(list(tmp_path.glob(".t.parquet.spool-*"))) >= 2  # waiting on disk, not in memory
        assert s.written == 0
    finally:
        os.kill(s.converter_pid, signal.SIGCONT)
    s.close({"kernel": "k", "lost": 0})
    assert 0 < s.peak_buffered <= 100
    assert not list(tmp_path.glob(".t.parquet.spool-*"))
    ev = read_trace(tmp_path / "t.parquet").events
    assert len(ev) == 500 and list(ev["seq"]) == list(range(500))
    assert (ev["ts_ns"].diff().dropna() >= 0).all()


def test_full_segments_wait_until_the_backlog_is_exceeded_then_the_oldest_is_converted(tmp_path):
    """A burst under the backlog costs no conversion during the run; past it, the oldest
    segments go to the converter while the newest wait; close converts the rest, in order."""
    import time

    seg = 100 * EVENT_DTYPE.itemsize
    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, backlog_bytes=int(2.5 * seg))
    s.segment_bytes = seg  # every batch of 100 fills a segment
    for i in range(2):
        s(_batch(100, start_ts=i * 100))
    time.sleep(0.5)
    assert s.written == 0 and len(list(tmp_path.glob(".t.parquet.spool-*"))) == 2  # all waiting
    for i in range(2, 5):
        s(_batch(100, start_ts=i * 100))
    for _ in range(500):  # 5 segments, 2.5 may wait: the 3 oldest are converted during the run
        if s.written == 300:
            break
        time.sleep(0.01)
    assert s.written == 300 and len(list(tmp_path.glob(".t.parquet.spool-*"))) == 2
    s.close({"kernel": "k", "lost": 0})
    ev = read_trace(tmp_path / "t.parquet").events
    assert list(ev["seq"]) == list(range(500)) and list(ev["ts_ns"]) == list(range(500))
    assert not list(tmp_path.glob(".t.parquet.spool-*"))


def test_segments_converted_during_the_run_use_small_row_groups(tmp_path, monkeypatch):
    """While the recording goes on the converter holds at most RUN_BATCH_ROWS events (its
    working set does not depend on the run's length); what close() converts uses batch_rows."""
    import time

    import pyarrow.parquet as pq

    from callpath.probes import stream

    monkeypatch.setattr(stream, "RUN_BATCH_ROWS", 30)
    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, backlog_bytes=0)
    s.segment_bytes = 100 * EVENT_DTYPE.itemsize
    s(_batch(100))  # a full segment: converted during the run, 30 at a time
    for _ in range(500):
        if s.written == 100:
            break
        time.sleep(0.01)
    assert s.written == 100 and s.peak_buffered == 30
    s(_batch(50, start_ts=100))  # not full: converted at close, in one row group
    s.close({"kernel": "k", "lost": 0})
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [30, 30, 30, 10, 50]
    assert list(read_trace(tmp_path / "t.parquet").events["seq"]) == list(range(150))


def test_converter_is_a_niced_process_of_its_own_and_goes_away(tmp_path):
    """The converter shares no GIL with the poll thread: another process, nice 19 while the
    run goes on, in a session of its own (a terminal's Ctrl-C reaches only the recorder);
    close() reaps it, and abort() kills it."""
    import os

    s = TraceStream(tmp_path / "t.parquet", batch_rows=100)
    pid = s.converter_pid
    assert pid != os.getpid() and os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert os.getsid(pid) == pid != os.getsid(0)
    s(_batch(10))
    s.close({"kernel": "k"})
    assert not os.path.exists(f"/proc/{pid}")
    a = TraceStream(tmp_path / "a.parquet", batch_rows=100)
    a.abort()
    assert not os.path.exists(f"/proc/{a.converter_pid}")


def test_converter_exits_when_the_recorder_is_gone(tmp_path):
    """End of input without close (the recorder was SIGKILLed): the converter exits by itself."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "callpath.probes.convert"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1


def test_convert_after_writes_nothing_until_close(tmp_path):
    """--convert-after: segments wait on disk during the run; close converts them all, in order."""
    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, convert_during=False)
    s.segment_bytes = 1  # every batch is a segment of its own
    for _ in range(5):
        s(_batch(100))
    import time

    time.sleep(0.3)  # a converter working during the run would have written by now
    assert s.written == 0 and len(list(tmp_path.glob(".t.parquet.spool-*"))) == 5
    s.close({"kernel": "k", "lost": 0})
    assert s.written == 500 and not list(tmp_path.glob(".t.parquet.spool-*"))
    assert list(read_trace(tmp_path / "t.parquet").events["seq"]) == list(range(500))


def test_convert_after_abort_removes_the_waiting_segments(tmp_path):
    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, convert_during=False)
    s.segment_bytes = 1
    s(_batch(100))
    s(_batch(100))
    s.abort()
    assert not list(tmp_path.glob(".t.parquet.spool-*"))


def test_write_failure_surfaces_in_sink_and_close(tmp_path):
    """The converter fails (its segment vanished): the sink's next batch and close() say so."""
    import os
    import signal
    import time

    s = TraceStream(tmp_path / "t.parquet", batch_rows=10, backlog_bytes=0)
    s.segment_bytes = 1  # every batch is a segment of its own: handed over at once
    os.kill(s.converter_pid, signal.SIGSTOP)
    s(_batch(10))
    for seg in tmp_path.glob(".t.parquet.spool-*"):
        seg.unlink()
    os.kill(s.converter_pid, signal.SIGCONT)
    for _ in range(500):
        if s._error is not None:
            break
        time.sleep(0.01)
    with pytest.raises(StreamError, match="No such file"):
        s(_batch(10))
    with pytest.raises(StreamError, match="No such file"):
        s.close({"kernel": "k"})


def test_unwritable_trace_is_one_error_from_the_constructor(tmp_path):
    with pytest.raises(StreamError, match="cannot write the trace"):
        TraceStream(tmp_path / "missing-dir" / "t.parquet")


def test_empty_stream_is_a_valid_trace(tmp_path):
    s = TraceStream(tmp_path / "t.parquet")
    s.close({"kernel": "k", "lost": 0, "mode": "aggregate"})
    t = read_trace(tmp_path / "t.parquet")
    assert len(t.events) == 0 and t.meta["mode"] == "aggregate" and t.meta["events"] == 0


def test_copy_trace_replaces_metadata_row_group_by_row_group(tmp_path):
    s = TraceStream(tmp_path / "a.parquet", names={1: "a"}, batch_rows=50)
    s(_batch(120, fids=(1,)))
    s.close({"kernel": "k", "lost": 2, "specs": ["/guest/000.txt"]})
    meta = read_meta(tmp_path / "a.parquet")
    meta["specs"] = ["/host/doc.txt"]
    copy_trace(tmp_path / "a.parquet", tmp_path / "b.parquet", meta)
    t = read_trace(tmp_path / "b.parquet")
    assert t.meta["specs"] == ["/host/doc.txt"] and t.meta["lost"] == 2 and len(t.events) == 120
    assert pq.ParquetFile(tmp_path / "b.parquet").metadata.num_row_groups == 3


def test_aggregate_meta_maps_ids_to_names():
    agg = {"paths": [{"ids": [3, 7], "calls": 12, "sum_ns": 34567}, {"ids": [9], "calls": 1, "sum_ns": 5}],
           "order": [{"parent": [3], "children": [7, 9], "calls": 10}],
           "hist": [{"func_id": 7, "bucket": 5, "count": 9}],
           "max_depth": 16, "depth_overflow": 1, "unmatched_returns": 2, "map_full": 0, "stale_frames": 0}
    out = rec_mod.aggregate_meta(agg, {3: "macvlan_start_xmit", 7: "dev_forward_skb"})
    assert out == {"paths": [{"path": ["macvlan_start_xmit", "dev_forward_skb"], "ids": [3, 7], "calls": 12,
                              "sum_ns": 34567},
                             {"path": ["#9"], "ids": [9], "calls": 1, "sum_ns": 5}],
                   "order": [{"parent": ["macvlan_start_xmit"], "children": ["dev_forward_skb", "#9"], "calls": 10}],
                   "hist": [{"function": "dev_forward_skb", "bucket": 5, "count": 9}],
                   "max_depth": 16, "depth_overflow": 1, "unmatched_returns": 2, "map_full": 0, "stale_frames": 0}


class FakeRecorder:
    """Stand-in for probes.loader.Recorder: feeds the sink from a thread-less loop, counts lost per CPU."""

    seen: dict = {}

    def __init__(self, plan, ringbuf_pages=1024, progress=None, probes="auto", filters=None, aggregate=False,
                 sink=None, drain="normal"):
        FakeRecorder.seen = dict(probes=probes, filters=filters, aggregate=aggregate, sink=sink, drain=drain)
        self.drain_boosts = 2
        self.plan, self.sink, self.aggregate_mode = plan, sink, aggregate
        self.attach = SimpleNamespace(failed={"d": "no such symbol"})
        self.arrived = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.aggregate_mode:
            for i in range(4):
                self.sink(_batch(300, i * 300))
        self.events = 0 if self.aggregate_mode else 1200
        self.lost, self.lost_per_cpu = 5, [0, 5]
        self.aggregate = {"paths": [{"ids": [1, 2], "calls": 3, "sum_ns": 30}], "order": [], "hist": [],
                          "max_depth": 16, "depth_overflow": 0, "unmatched_returns": 0,
                          "map_full": 0, "stale_frames": 0} if self.aggregate_mode else None
        return False


@pytest.mark.parametrize("aggregate", [False, True])
def test_probe_and_stream_fills_meta(tmp_path, aggregate):
    plan = _plan()
    stream = TraceStream(tmp_path / "t.parquet", names=plan.slot_names(), mechanism=plan, batch_rows=256)
    meta = {"kernel": "6.1.0-test"}
    filters = SimpleNamespace(netns=4026531840, ifindex=None, tgid=None)
    rec_mod.probe_and_stream(plan, stream, meta, lambda: [{"name": "veth"}], lambda m: None, probes="kprobe",
                             filters=filters, aggregate=aggregate, recorder=FakeRecorder, drain="yield")
    assert FakeRecorder.seen["probes"] == "kprobe" and FakeRecorder.seen["sink"] is stream
    assert FakeRecorder.seen["drain"] == "yield"
    stream.close(meta)
    t = read_trace(tmp_path / "t.parquet")
    assert t.meta["mode"] == ("aggregate" if aggregate else "events")
    assert t.meta["lost"] == 5 and t.meta["lost_per_cpu"] == [0, 5] and t.meta["probes"] == "kprobe"
    assert t.meta["filters"] == {"netns": 4026531840} and t.meta["attach_failed"] == {"d": "no such symbol"}
    assert t.meta["drain"] == {"policy": "yield", "boosts": 2}
    assert "fentry/fexit: 1" in t.meta["mechanism"] and "kprobe/kretprobe: 1" in t.meta["mechanism"]
    if aggregate:
        assert len(t.events) == 0
        assert t.meta["aggregate"]["paths"] == [{"path": ["a", "b"], "ids": [1, 2], "calls": 3, "sum_ns": 30}]
    else:
        assert len(t.events) == 1200 and "aggregate" not in t.meta
    assert rec_mod.lost_line(5, [0, 5]) == "5 lost (CPU 1: 5)"


def _fake_trace(path, lost):
    s = TraceStream(path, batch_rows=10)
    s(_batch(3))
    return s.close({"kernel": "k", "lost": lost, "lost_per_cpu": [lost]})


@pytest.mark.parametrize("lost,status", [(0, 0), (7, 3)])
def test_record_exit_status_when_events_were_lost(tmp_path, monkeypatch, capsys, lost, status):
    from callpath.cli import main
    from callpath.probes import record as record_module
    from callpath.probes import session

    seen = {}

    def fake_record(specs, out, **kw):
        seen.update(kw)
        return _fake_trace(out, lost)

    monkeypatch.setattr(record_module, "record", fake_record)
    monkeypatch.setattr(session, "sweep", lambda p: None)
    out = tmp_path / "t.parquet"
    rc = main(["record", "specs/macvlan-newlink-xmit.txt", "--out", str(out), "--probes", "fentry", "--aggregate",
               "--duration", "1"])
    assert rc == status
    assert seen["probes"] == "fentry" and seen["aggregate"] is True and seen["filters"] is None
    err = capsys.readouterr().err
    assert ("exit status 3" in err) == bool(lost)


def test_cli_filters_reach_resolve_filters_and_errors_are_one_line(monkeypatch, capsys, tmp_path):
    import sys
    import types

    from callpath.cli import main
    from callpath.probes import record as record_module
    from callpath.probes import session

    class FilterError(ValueError):
        pass

    calls = []

    def resolve_filters(netns=None, dev=None, pid=None):
        calls.append((netns, dev, pid))
        raise FilterError(f"--netns {netns}: no such network namespace (/run/netns/{netns})")

    fake = types.ModuleType("callpath.probes.filters")
    fake.FilterError, fake.resolve_filters = FilterError, resolve_filters
    monkeypatch.setitem(sys.modules, "callpath.probes.filters", fake)
    monkeypatch.setattr(session, "sweep", lambda p: None)
    monkeypatch.setattr(record_module, "record", lambda *a, **k: pytest.fail("recorded despite a bad filter"))
    rc = main(["record", "specs/macvlan-newlink-xmit.txt", "--out", str(tmp_path / "t.parquet"), "--netns", "blue",
               "--dev", "eth0", "--pid", "42"])
    assert rc == 2 and calls == [("blue", "eth0", 42)]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["callpath: error: --netns blue: no such network namespace (/run/netns/blue)"]


def test_lab_refuses_filters_before_booting(tmp_path, monkeypatch, capsys):
    from callpath.cli import main
    from callpath.probes import kernel, session

    monkeypatch.setattr(kernel, "has_kprobes", lambda: False)
    monkeypatch.setattr(session, "needs_root", lambda host: None)
    monkeypatch.setattr(session, "sweep", lambda p: pytest.fail("went on despite a lab filter"))
    rc = main(["verify", "specs/macvlan-newlink-xmit.txt", "--out", str(tmp_path / "o"), "--dev", "eth0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--dev eth0" in err[0] and "--host" in err[0]


def test_probing_argv_for_the_lab_guest():
    from callpath.probes.session import Probing

    assert Probing().argv() == ["--probes", "auto"]
    assert Probing(probes="kprobe", aggregate=True).argv() == ["--probes", "kprobe", "--aggregate"]
    assert Probing(convert_after=True).argv() == ["--probes", "auto", "--convert-after"]
    assert Probing(drain="yield").argv() == ["--probes", "auto", "--drain", "yield"]
    assert Probing(drain="yield").kwargs()["drain"] == "yield"
    assert Probing().kwargs() == {"probes": "auto", "aggregate": False, "filters": None, "convert_after": False, "drain": "normal"}


def test_cli_parses_probe_flags():
    from callpath.cli import build_parser

    p = build_parser()
    a = p.parse_args(["verify", "--host", "--probes", "kprobe", "--aggregate", "--netns", "4026531840",
                      "--dev", "veth0", "--pid", "1"])
    assert (a.probes, a.aggregate, a.netns, a.dev, a.pid) == ("kprobe", True, "4026531840", "veth0", 1)
    a = p.parse_args(["record", "--out", "t.parquet"])
    assert (a.probes, a.aggregate, a.netns, a.dev, a.pid) == ("auto", False, None, None, None)
    with pytest.raises(SystemExit):
        p.parse_args(["record", "--out", "t", "--probes", "uprobe"])


def test_filters_meta_from_the_real_filters_class(tmp_path):
    from callpath.probes.filters import Filters

    plan = _plan()
    stream = TraceStream(tmp_path / "t.parquet", names=plan.slot_names(), mechanism=plan)
    meta = {"kernel": "k"}
    f = Filters(netns=4026532000, ifindex=3, labels=(("dev", "veth0"),))
    rec_mod.probe_and_stream(plan, stream, meta, lambda: [], lambda m: None, filters=f, recorder=FakeRecorder)
    stream.close(meta)
    assert read_meta(tmp_path / "t.parquet")["filters"] == {"netns": 4026532000, "ifindex": 3,
                                                            "labels": {"dev": "veth0"}}


def test_lab_job_passes_probing_and_accepts_lost_status(tmp_path, monkeypatch):
    """The guest gets --probes/--aggregate; its exit status 3 (events lost) still yields the trace,
    copied out row group by row group with the host's document names."""
    from pathlib import Path

    from callpath.probes import labvm, runstate, session

    monkeypatch.setenv("CALLPATH_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setattr(runstate, "_reg", runstate._Registry())
    monkeypatch.setattr(labvm, "find_vng", lambda: "/x/vng")
    seen = {}

    def run(lab, inner, rwdirs, **kw):
        seen["job"] = Path(inner[1]).read_text()
        _fake_trace(rwdirs[0] / "trace.parquet", 4)
        return session.LOST_STATUS

    monkeypatch.setattr(labvm, "run_in_lab", run)
    spec = Path(__file__).resolve().parent.parent / "specs" / "macvlan-newlink-xmit.txt"
    lab = labvm.LabKernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), True)
    out = session.verify_in_lab(lab, [spec], tmp_path / "o", session.Traffic(workloads=["macvlan"]), lambda m: None,
                                probing=session.Probing(probes="fentry", aggregate=True))
    assert "--probes fentry --aggregate" in seen["job"]
    meta = read_meta(out)
    assert meta["lost"] == 4 and meta["specs"] == [str(spec)] and len(read_trace(out).events) == 3
    with pytest.raises(session.SessionError, match="--pid 7"):
        session.verify_in_lab(lab, [spec], tmp_path / "o2", session.Traffic(), lambda m: None,
                              probing=session.Probing(pid=7))


def test_converter_stores_timestamps_as_deltas_and_dictionaries_only_where_they_pay(tmp_path):
    """seq/ts_ns: DELTA_BINARY_PACKED, no dictionary; function/skb: dictionary; the trace reads back equal."""
    from callpath.probes.convert import Converter

    ev = np.zeros(5000, EVENT_DTYPE)
    ev["ts_ns"] = 10**12 + np.arange(5000) * 137
    ev["func_id"] = np.arange(5000) % 3
    ev["kind"] = np.arange(5000) % 2
    ev["arg"] = np.uint64(0xFFFF888000000000) + (np.arange(5000, dtype=np.uint64) // np.uint64(22)) * np.uint64(256)
    ev["tid"] = 9
    seg = tmp_path / "seg"
    ev.tofile(seg)
    c = Converter(tmp_path / "t.parquet", {0: "a", 1: "b", 2: "c"}, 4096)
    c.segment(seg, 0, {0: "fentry", 1: "fentry", 2: "kprobe"}, comms={9: b"python3"})
    c.close(json.dumps({"schema": 1}))
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    cols = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}
    for name in ("seq", "ts_ns"):
        assert "DELTA_BINARY_PACKED" in cols[name].encodings, cols[name].encodings
        assert not cols[name].has_dictionary_page
    for name in ("function", "skb", "comm"):
        assert cols[name].has_dictionary_page, name
    back = pq.read_table(tmp_path / "t.parquet").to_pandas()
    assert back["ts_ns"].tolist() == ev["ts_ns"].tolist()
    assert back["seq"].tolist() == list(range(5000))
    assert back["function"].astype(str).tolist()[:4] == ["a", "b", "c", "a"]


def test_thread_names_are_joined_by_tid_and_the_idle_task_is_named_per_cpu(tmp_path):
    """Records carry no name: the converter joins the recorder's tid -> comm map (sent with
    a segment when it changed), names tid 0 swapper/<cpu> as the kernel does, and leaves a
    thread the map did not hold when its segment was handed over unnamed."""
    names = {7: b"iperf3"}
    s = TraceStream(tmp_path / "t.parquet", batch_rows=100, backlog_bytes=0)
    s.comm_source = lambda: dict(names)
    s.segment_bytes = 1  # every batch is a segment of its own
    b = _batch(4)
    b["tid"] = [7, 0, 0, 8]
    b["cpu"] = [0, 0, 3, 1]
    s(b)
    names[8] = b"ksoftirqd/1"  # known by the time the next segment is handed over
    s(_batch(2, start_ts=4))
    s.close({"kernel": "k", "lost": 0})
    ev = read_trace(tmp_path / "t.parquet").events
    assert ev["comm"].astype(str).tolist() == ["iperf3", "swapper/0", "swapper/3", "", "iperf3", "iperf3"]
    assert s._sent_comms == {7: b"iperf3", 8: b"ksoftirqd/1"}  # the map as last read, no more
