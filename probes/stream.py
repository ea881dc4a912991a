"""Stream ring-buffer events into a Parquet trace while the run goes on (bounded memory).

The :class:`probes.loader.Recorder` hands its ``sink`` numpy batches
(``probes.event.EVENT_DTYPE``, 40-byte records) from its poll thread.
:class:`TraceStream` is such a sink, in two stages:

1. the sink appends the raw records to a **spool** of segment files beside the
   trace (64 MiB each): a copy into the page cache, the least work the poll
   thread can do per event, so draining keeps up and the workload keeps the CPU;
2. a **converter process** (:mod:`probes.convert`, nice 19: it yields to the
   traffic being recorded, and shares no GIL with the poll thread) reads each
   full segment back ``batch_rows`` events at a time, numbers them (``seq``),
   names function and mechanism from the plan, and appends one zstd row group
   per batch with ``pyarrow.parquet.ParquetWriter``; a converted segment is deleted.

Full segments wait on disk until they add up to more than ``backlog_bytes``
(:data:`BACKLOG_BYTES`, 256 MiB: about 6.7 M events); only then does the
oldest go to the converter while the run goes on. So a burst of traffic pays
for one copy of its records into the page cache and none for Parquet, which is
written when the traffic has passed (at :meth:`TraceStream.close`); sustained
traffic beyond the backlog is converted as it comes, at nice 19, and the disk
holds at most the backlog plus the segment being filled. Measured in the lab
VM (``benchmarks/bench_overhead.py``, 2 vCPUs under QEMU TCG): with the
converter running during a UDP flood, the flood kept 0.13 of its no-probe
rate; with the records only spooled, 0.21, what draining alone kept.

Memory holds at most ``batch_rows`` events in the converter however long the
run is (``RUN_BATCH_ROWS``, 16 Ki, while the recording goes on); what the converter has not caught up with waits on disk (40 bytes per
event; it catches up at full priority when the recording ends).

At the end (:meth:`TraceStream.close`) the evidence recorded without BPF (boot
function_graph, module-init kprobe events: small lists of tuples) is appended,
and the metadata record -- known only then -- goes into the file's key/value
metadata under ``callpath``. The file is written without an embedded Arrow
schema (``store_schema=False``), so that record *is* the Arrow schema
metadata :func:`analysis.trace.read_trace` reads: the file reads exactly like
one :func:`analysis.trace.write_trace` wrote.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import runstate
from .event import EVENT_DTYPE

#: Events per row group (and the most the converter holds): 128 Ki events = 9 MiB of records.
BATCH_ROWS = 1 << 17
#: Events per row group while the recording goes on: the converter's working set then stays
#: small (measured on 1 M events, this host: +23 MiB over its idle 108 MiB at 8 Ki rows,
#: +34 MiB at 32 Ki, +74 MiB at 128 Ki), so memory does not depend on whether the run
#: was long enough to need converting before its end; the rest is converted at close in
#: ``batch_rows`` row groups.
RUN_BATCH_ROWS = 1 << 14
#: Kept for callers (the spool on disk replaced the in-memory queue).
QUEUE_BATCHES = 2
#: Bytes per spool segment (raw 40-byte records) before it is handed to the converter.
SEGMENT_BYTES = 64 << 20
#: Bytes of full segments left waiting on disk before the converter gets the oldest during the run.
BACKLOG_BYTES = 256 << 20


class StreamError(OSError):
    """Writing the trace failed (disk full, not writable); the message names the file."""


def _write_all(fh, data: np.ndarray) -> None:
    """Write all of ``data`` (a contiguous uint8 array) to the unbuffered file ``fh``.

    Raises ``OSError`` as ``write(2)`` does (disk full).
    """
    view = memoryview(data)
    while len(view):
        view = view[fh.write(view):]


def _mechanism_table(plan) -> Callable[[int], str]:
    """func_id -> mechanism, read from the plan when asked (a late module's functions get their
    ``probe`` when they attach, before their first event; a segment is handed over after that)."""
    sites = set(plan.site_slots())
    names = plan.slot_names()

    def mech(fid: int) -> str:
        if fid in sites:
            return "inline-site"
        fp = plan.functions.get(names.get(fid, ""))
        return getattr(fp, "probe", None) or "kprobe"

    return mech


class TraceStream:
    """A Recorder ``sink`` that appends events to a Parquet trace in row groups.

    Usage::

        stream = TraceStream(path, names=plan.slot_names(), mechanism=plan)   # starts the converter
        with Recorder(plan, sink=stream) as rec:
            ...
        stream.close(meta, once=[(rows, "function_graph")])

    Args:
        path: the Parquet file to write (created by the converter; a staging path: see
            :func:`callpath.outputs.staged_dir`).
        names: func_id -> function name (``plan.slot_names()``); unknown ids get ``#ID``.
        mechanism: func_id -> mechanism (a key of ``analysis.trace.MECHANISMS``), or a plan
            (its FunctionPlan ``probe`` fields and inline-site slots are used); default ``kprobe``.
            Asked in this process when a segment is handed over, for the ids in ``names``.
        batch_rows: events per row group, and the most the converter holds in memory (>= 1);
            while the run goes on, at most :data:`RUN_BATCH_ROWS`.
        queue_batches: kept for callers (>= 1).
        convert_during: True (default): spool segments beyond ``backlog_bytes`` are converted
            while the run goes on, by the converter process at nice 19. False: they all wait on
            disk (40 bytes per event) and are converted in :meth:`close`, so the run itself
            spends no CPU on Parquet (``record --convert-after``).
        backlog_bytes: bytes of full segments left waiting before the oldest is converted
            during the run (``convert_during`` only; default :data:`BACKLOG_BYTES`; 0: each
            segment as soon as it is full).

    Attributes:
        events: events received so far (int).
        written: events written as row groups so far (as last reported by the converter).
        peak_buffered: most events the converter ever held at once (<= ``batch_rows``).
        row_groups: row groups written.
        segment_bytes: spool segment size in bytes (64 MiB).
        converter_pid: the converter process's pid.

    Raises:
        StreamError: the converter cannot start or create the file (from the constructor),
            or a write failed (from the sink after the failure, and from :meth:`close`).
    """

    def __init__(self, path: str | Path, names: dict[int, str] | None = None, mechanism=None,
                 batch_rows: int = BATCH_ROWS, queue_batches: int = QUEUE_BATCHES, convert_during: bool = True,
                 backlog_bytes: int = BACKLOG_BYTES):
        if batch_rows < 1 or queue_batches < 1 or backlog_bytes < 0:
            raise ValueError("batch_rows and queue_batches must be >= 1, backlog_bytes >= 0")
        self.path = Path(path)
        self.names = dict(names or {})
        if mechanism is None:
            self._mech = lambda _fid: "kprobe"
        elif callable(mechanism):
            self._mech = mechanism
        else:
            self._mech = _mechanism_table(mechanism)
        self.batch_rows = batch_rows
        self.events = 0
        self.written = 0
        self.peak_buffered = 0
        self.row_groups = 0
        self.segment_bytes = SEGMENT_BYTES
        self._seg_n = 0
        self._seg = None  # (path, file) being appended to
        self._queued = 0  # events in segments handed over: the next seq
        self._held: list[tuple[int, Path, int]] = []  # (first seq, segment, bytes) waiting on disk
        self._backlog = backlog_bytes if convert_during else None  # None: all wait for close()
        self._error: str | None = None
        self._closed = False
        self._done = threading.Event()
        self._send_lock = threading.Lock()
        self._last_mech: dict[int, str] | None = None
        #: () -> {tid: comm bytes}: the names of the threads recorded so far (the Recorder sets it
        #: to its ``comms``: the BPF map, then its contents at the end); None: no names
        self.comm_source: Callable[[], dict[int, bytes]] | None = None
        self._sent_comms: dict[int, bytes] | None = None
        try:  # fail at once on a path that cannot be written (the converter replaces the file)
            self.path.open("wb").close()
        except OSError as err:
            raise StreamError(f"{self.path}: cannot write the trace: {err}") from None
        self._start_converter()

    # -- the converter process ----------------------------------------------
    def _start_converter(self) -> None:
        try:
            # a session of its own: a terminal's Ctrl-C reaches the recorder, which stops it
            self._proc = subprocess.Popen([sys.executable, "-m", "callpath.probes.convert"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, start_new_session=True)
        except OSError as err:
            raise StreamError(f"{self.path}: cannot start the trace converter: {err}") from None
        self.converter_pid = self._proc.pid
        self._priority(19)  # yield to the traffic being recorded; close() raises it back
        runstate.register("pid", str(self._proc.pid))  # swept after a SIGKILL (it also exits on end of input)
        self._reader = threading.Thread(target=self._answers, name="callpath-trace-answers", daemon=True)
        self._reader.start()
        # not waited for: the converter's imports (seconds under emulation) overlap the BPF compile;
        # a failure to open surfaces in the sink or close()
        self._send("open", str(self.path), self.names, self.batch_rows)

    def _answers(self) -> None:
        """Reader thread: the converter's answers (blocks in read(2), which releases the GIL)."""
        try:
            while True:
                msg = pickle.load(self._proc.stdout)
                if msg[0] == "error":
                    self._error = self._error or msg[1]
                else:
                    self.written, self.row_groups, self.peak_buffered = msg[1:4]
                    if msg[0] == "done":
                        self._done.set()
        except (EOFError, OSError, pickle.UnpicklingError):
            if not self._done.is_set() and self._error is None:
                self._error = f"the converter process exited (status {self._proc.poll()})"
        finally:
            self._done.set()

    def _send(self, *msg) -> None:
        with self._send_lock:
            try:
                pickle.dump(msg, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
            except (OSError, ValueError) as err:  # BrokenPipeError: it died; its reason is in _error
                self._error = self._error or f"the converter process is gone ({err})"

    def _stop_converter(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for fh in (self._proc.stdin, self._proc.stdout):
            try:
                fh.close()
            except OSError:
                pass
        runstate.unregister("pid", str(self._proc.pid))

    def _priority(self, nice: int) -> None:
        """Set the converter's nice value, best effort (lowering it needs CAP_SYS_NICE)."""
        try:
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, nice)
        except OSError:
            pass

    # -- the sink (poll thread) ------------------------------------------
    #: The sink is done with a batch when it returns (written to the spool): the recorder may
    #: hand over the next batch in the same memory (probes/loader.py ``_drain``).
    borrows_batches = True

    def __call__(self, batch: np.ndarray) -> None:
        """Take one batch of events (EVENT_DTYPE records, arrival order): appended to the spool.

        The records go to the file from the batch's own memory (no copy in between: under
        emulation every pass over the records costs the traffic being recorded).
        """
        if self._error is not None:
            raise StreamError(f"{self.path}: writing the trace failed: {self._error}")
        batch = np.asarray(batch)
        if batch.dtype != EVENT_DTYPE:
            batch = batch.view(EVENT_DTYPE) if batch.dtype.itemsize == EVENT_DTYPE.itemsize else batch.astype(EVENT_DTYPE)
        if not len(batch):
            return
        try:
            if self._seg is None:
                seg = self.path.with_name(f".{self.path.name}.spool-{self._seg_n}")
                self._seg_n += 1
                self._seg = (seg, open(seg, "wb", buffering=0))  # noqa: SIM115 - closed on rotation
            _write_all(self._seg[1], np.ascontiguousarray(batch).view(np.uint8))
            self.events += len(batch)
            if self._seg[1].tell() >= self.segment_bytes:
                self._hand_off()
        except OSError as err:
            self._error = str(err)
            raise StreamError(f"{self.path}: writing the spool failed: {err}") from None

    def _hand_off(self) -> None:
        """Close the segment being appended to and hand it to the converter (or hold it)."""
        if self._seg is None:
            return
        seg, fh = self._seg
        self._seg = None
        n = fh.tell() // EVENT_DTYPE.itemsize
        fh.close()
        self._held.append((self._queued, seg, n * EVENT_DTYPE.itemsize))
        self._queued += n
        while self._backlog is not None and sum(h[2] for h in self._held) > self._backlog:
            start, oldest, _n = self._held.pop(0)
            self._send_segment(start, oldest, min(self.batch_rows, RUN_BATCH_ROWS))

    def _send_segment(self, start: int, seg: Path, rows: int) -> None:
        mech = {fid: self._mech(fid) for fid in self.names}
        changed = mech != self._last_mech  # sent only when it changed (late modules): messages stay small
        self._last_mech = mech
        # the whole map (at most its 65,536 threads: bounded however many threads a long run sees),
        # and only when it changed
        comms = self.comm_source() if self.comm_source is not None else {}
        fresh = comms != self._sent_comms
        self._sent_comms = comms
        self._send("segment", start, str(seg), mech if changed else None, rows, comms if fresh else None)

    # -- end --------------------------------------------------------------
    def close(self, meta: dict, once: Iterable[tuple[list[tuple], str]] = ()) -> Path:
        """Write what is spooled, then ``once`` (rows, mechanism) pairs, then ``meta``; close the file.

        ``meta["events"]`` is set to the number of rows in the file. Returns the path.

        Raises:
            StreamError: a write failed (the file is left incomplete; the caller's staging removes it).
        """
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._backlog = None  # the recording is over: the last segment waits with the others
            self._hand_off()
            self._priority(0)  # the recording is over: catch up at full priority
            for start, seg, _n in self._held:
                self._send_segment(start, seg, self.batch_rows)
            self._held = []
            total = self._queued
            for rows, mechanism in once:
                if rows:
                    self._send("rows", list(rows), mechanism, total)
                    total += len(rows)
            meta["events"] = total
            text = json.dumps(meta, indent=2, sort_keys=True, default=str)
            self._send("close", text)
            self._done.wait()
            self._reader.join(timeout=10)
        finally:
            self._stop_converter()
        if self._error is not None:
            raise StreamError(f"{self.path}: writing the trace failed: {self._error}")
        self.path.with_suffix(".meta.json").write_text(text + "\n")
        return self.path

    def abort(self) -> None:
        """Stop the converter and remove the spool (the partial file is left to the caller's staging)."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or "aborted"
        if self._seg is not None:
            self._seg[1].close()
            self._seg[0].unlink(missing_ok=True)
            self._seg = None
        self._stop_converter()
        for _start, seg, _n in self._held:
            seg.unlink(missing_ok=True)
        self._held = []
        for seg in self.path.parent.glob(f".{self.path.name}.spool-*"):  # handed over, not yet converted
            seg.unlink(missing_ok=True)
