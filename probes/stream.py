"""Stream ring-buffer events into a Parquet trace while the run goes on (bounded memory).

The :class:`probes.loader.Recorder` hands its ``sink`` numpy batches
(``probes.event.EVENT_DTYPE``, 72-byte records) from its poll thread.
:class:`TraceStream` is such a sink, in two stages:

1. the sink appends the raw records to a **spool** of segment files beside the
   trace (64 MiB each): a copy into the page cache, the least work the poll
   thread can do per event, so draining keeps up and the workload keeps the CPU;
2. a converter thread, at the lowest CPU priority (nice 19: it yields to the
   traffic being recorded), reads each full segment back ``batch_rows`` events
   at a time, numbers them (``seq``), names function and mechanism from the
   plan, and appends one zstd row group per batch with
   ``pyarrow.parquet.ParquetWriter``; a converted segment is deleted.

Memory holds at most ``batch_rows`` events in the converter however long the
run is; what the converter has not caught up with waits on disk (72 bytes per
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
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .event import EVENT_DTYPE

#: Events per row group (and per hand-off to the writer thread): 128 Ki events = 9 MiB of records.
BATCH_ROWS = 1 << 17
#: Full buffers that may wait for the writer thread before the sink blocks (kept for callers; the spool
#: on disk replaced the in-memory queue).
QUEUE_BATCHES = 2
#: Bytes per spool segment (raw 72-byte records) before it is handed to the converter.
SEGMENT_BYTES = 64 << 20
#: Columns with Parquet statistics (min/max); the others skip them to keep the footer small.
STAT_COLUMNS = ["seq", "ts_ns", "func_id"]


class StreamError(OSError):
    """Writing the trace failed (disk full, not writable); the message names the file."""


def _mechanism_table(plan) -> Callable[[int], str]:
    """func_id -> mechanism, read from the plan when first asked (a late module's
    functions get their ``probe`` when they attach, before their first event)."""
    sites = set(plan.site_slots())
    names = plan.slot_names()
    cache: dict[int, str] = {}

    def mech(fid: int) -> str:
        if fid in cache:
            return cache[fid]
        if fid in sites:
            m = "inline-site"
        else:
            fp = plan.functions.get(names.get(fid, ""))
            m = getattr(fp, "probe", None) or "kprobe"
            if getattr(fp, "probe", None) is None:
                return m  # not attached yet: do not remember
        cache[fid] = m
        return m

    return mech


class TraceStream:
    """A Recorder ``sink`` that appends events to a Parquet trace in row groups.

    Usage::

        stream = TraceStream(path, names=plan.slot_names(), mechanism=...)   # opens the file
        with Recorder(plan, sink=stream) as rec:
            ...
        stream.close(meta, once=[(rows, "function_graph")])

    Args:
        path: the Parquet file to write (created now; a staging path: see
            :func:`callpath.outputs.staged_dir`).
        names: func_id -> function name (``plan.slot_names()``); unknown ids get ``#ID``.
        mechanism: func_id -> mechanism (a key of ``analysis.trace.MECHANISMS``), or a plan
            (its FunctionPlan ``probe`` fields and inline-site slots are used); default ``kprobe``.
        batch_rows: events per row group, and the most the converter holds in memory (>= 1).
        queue_batches: kept for callers (>= 1); the spool on disk took the place of the queue.
        convert_during: True (default): spool segments are converted while the run goes
            on, at nice 19. False: they wait on disk (72 bytes per event) and are all
            converted in :meth:`close`, so the run itself spends no CPU on Parquet
            (``record --convert-after``).

    Attributes:
        events: events received so far (int).
        written: events written as row groups so far.
        peak_buffered: most events the converter ever held at once (<= ``batch_rows``).
        row_groups: row groups written.
        segment_bytes: spool segment size in bytes (64 MiB).

    Raises:
        StreamError: the file cannot be created (from the constructor), or a
            write failed (from the sink after the failure, and from :meth:`close`).
    """

    def __init__(self, path: str | Path, names: dict[int, str] | None = None, mechanism=None,
                 batch_rows: int = BATCH_ROWS, queue_batches: int = QUEUE_BATCHES, convert_during: bool = True):
        import pyarrow as pa  # noqa: PLC0415 - imported before the probes attach, not in the poll thread
        import pyarrow.parquet as pq  # noqa: PLC0415

        from ..analysis.trace import READ_SCHEMA, STRING_COLUMNS  # noqa: PLC0415

        if batch_rows < 1 or queue_batches < 1:
            raise ValueError("batch_rows and queue_batches must be >= 1")
        self.path = Path(path)
        self.names = dict(names or {})
        if mechanism is None:
            self._mech = lambda _fid: "kprobe"
        elif callable(mechanism):
            self._mech = mechanism
        else:
            self._mech = _mechanism_table(mechanism)
        self.batch_rows = batch_rows
        # string columns are written dictionary-encoded, as they are read (READ_SCHEMA): no
        # per-row strings are made; Parquet stores them as UTF-8 either way
        self._pa, self._schema, self._strings = pa, READ_SCHEMA, STRING_COLUMNS
        try:
            self._writer = pq.ParquetWriter(self.path, READ_SCHEMA, compression="zstd", store_schema=False,
                                            write_statistics=STAT_COLUMNS)
        except (OSError, pa.ArrowException) as err:
            raise StreamError(f"{self.path}: cannot write the trace: {err}") from None
        self.events = 0
        self.written = 0
        self.peak_buffered = 0
        self.row_groups = 0
        self.segment_bytes = SEGMENT_BYTES
        self._seg_n = 0
        self._seg = None  # (path, file) being appended to
        self._queued = 0  # events in segments handed to the converter: the next seq
        self._queue: queue.Queue = queue.Queue()  # segment paths (tiny); the data waits on disk
        self._held: list[tuple[int, Path]] | None = None if convert_during else []  # segments kept for close()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="callpath-trace-writer", daemon=True)
        self._thread.start()

    # -- the sink (poll thread) ------------------------------------------
    def __call__(self, batch: np.ndarray) -> None:
        """Take one batch of events (EVENT_DTYPE records, arrival order): appended to the spool."""
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
                self._seg = (seg, open(seg, "wb"))  # noqa: SIM115 - closed on rotation
            self._seg[1].write(batch.tobytes())
            self.events += len(batch)
            if self._seg[1].tell() >= self.segment_bytes:
                self._hand_off()
        except OSError as err:
            self._error = err
            raise StreamError(f"{self.path}: writing the spool failed: {err}") from None

    def _hand_off(self) -> None:
        """Close the segment being appended to and queue it for the converter."""
        if self._seg is None:
            return
        seg, fh = self._seg
        self._seg = None
        n = fh.tell() // EVENT_DTYPE.itemsize
        fh.close()
        if self._held is not None:
            self._held.append((self._queued, seg))
        else:
            self._queue.put((self._queued, seg))
        self._queued += n

    # -- converter thread ---------------------------------------------------
    def _priority(self, nice: int) -> None:
        """Set the converter thread's nice value (Linux: per thread), best effort."""
        import os  # noqa: PLC0415

        tid = getattr(self, "_tid", None)
        if tid:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                pass

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        self._priority(19)
        while True:
            item = self._queue.get()
            if item is None:
                return
            start, seg = item
            try:
                if self._error is None:
                    self._convert(seg, start)
            except BaseException as err:  # noqa: BLE001 - surfaced in the sink and close()
                self._error = err
            finally:
                seg.unlink(missing_ok=True)

    def _convert(self, seg: Path, start: int) -> None:
        with open(seg, "rb") as fh:
            while True:
                chunk = np.fromfile(fh, dtype=EVENT_DTYPE, count=self.batch_rows)
                if not len(chunk):
                    return
                self.peak_buffered = max(self.peak_buffered, len(chunk))
                self._write(self.table_of(chunk, start))
                start += len(chunk)

    def _write(self, table) -> None:
        self._writer.write_table(table, row_group_size=max(len(table), 1))
        self.written += len(table)
        self.row_groups += 1

    def table_of(self, chunk: np.ndarray, start: int):
        """One Arrow table (``analysis.trace.SCHEMA``) from EVENT_DTYPE records numbered from ``start``."""
        pa = self._pa
        n = len(chunk)
        fids = chunk["func_id"]
        uniq, inv = np.unique(fids, return_inverse=True)
        inv = inv.astype(np.int32)
        function = pa.DictionaryArray.from_arrays(
            inv, pa.array([self.names.get(int(f), f"#{int(f)}") for f in uniq], pa.string()))
        mechanism = pa.DictionaryArray.from_arrays(
            inv, pa.array([self._mech(int(f)) for f in uniq], pa.string()))
        # comm: the 16 bytes as two u64 mixed into one key (a u64 sort, not a string sort);
        # few distinct values per batch, each decoded once
        raw = np.ascontiguousarray(chunk["comm"]).view("<u8").reshape(n, 2)
        key = raw[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ raw[:, 1]
        _uk, first, cinv = np.unique(key, return_index=True, return_inverse=True)
        comm = pa.DictionaryArray.from_arrays(
            cinv.astype(np.int32).ravel(),
            pa.array([c.split(b"\0", 1)[0].decode("utf-8", "replace") for c in chunk["comm"][first].tolist()],
                     pa.string()),
        )
        cols = {
            "seq": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "ts_ns": pa.array(chunk["ts_ns"]), "kind": pa.array(chunk["kind"]), "func_id": pa.array(fids),
            "function": function, "tid": pa.array(chunk["tid"]), "tgid": pa.array(chunk["tgid"]),
            "cpu": pa.array(chunk["cpu"]), "skb": pa.array(chunk["skb"]), "ifindex": pa.array(chunk["ifindex"]),
            "netns": pa.array(chunk["netns"]), "retval": pa.array(chunk["retval"]), "comm": comm,
            "mechanism": mechanism,
        }
        return pa.Table.from_arrays([cols[f.name] if f.name in self._strings else cols[f.name].cast(f.type)
                                     for f in self._schema], schema=self._schema)

    def _rows_table(self, rows: list[tuple], mechanism: str, start: int):
        """Arrow table of decoded rows (``probes.event.TRACE_COLUMNS`` order, optional 13th field: name)."""
        pa = self._pa
        fields = ["seq", "ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval", "comm"]
        cols: dict[str, list] = {f: [r[i] for r in rows] for i, f in enumerate(fields)}
        cols["seq"] = [start + i for i in range(len(rows))]  # after the probe events, as concat_events numbers them
        cols["comm"] = [c.split(b"\0", 1)[0].decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                        for c in cols["comm"]]
        cols["function"] = [r[12] if len(r) > 12 else self.names.get(int(r[3]), f"#{r[3]}") for r in rows]
        cols["mechanism"] = [mechanism] * len(rows)
        return pa.Table.from_arrays([pa.array(cols[f.name], pa.string()).dictionary_encode()
                                     if f.name in self._strings else pa.array(cols[f.name], f.type)
                                     for f in self._schema], schema=self._schema)

    # -- end --------------------------------------------------------------
    def close(self, meta: dict, once: Iterable[tuple[list[tuple], str]] = ()) -> Path:
        """Write what is buffered, then ``once`` (rows, mechanism) pairs, then ``meta``; close the file.

        ``meta["events"]`` is set to the number of rows in the file. Returns the path.

        Raises:
            StreamError: a write failed (the file is left incomplete; the caller's staging removes it).
        """
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._hand_off()
        finally:
            self._priority(0)  # the recording is over: catch up at full priority
            for item in self._held or ():
                self._queue.put(item)
            self._held = None
            self._queue.put(None)
            self._thread.join()
        try:
            if self._error is not None:
                raise StreamError(f"{self.path}: writing the trace failed: {self._error}")
            total = self._queued
            for rows, mechanism in once:
                if rows:
                    self._write(self._rows_table(list(rows), mechanism, total))
                    total += len(rows)
            meta["events"] = total
            text = json.dumps(meta, indent=2, sort_keys=True, default=str)
            self._writer.add_key_value_metadata({b"callpath": text.encode()})
            self._writer.close()
        except (OSError, self._pa.ArrowException) as err:
            raise StreamError(f"{self.path}: writing the trace failed: {err}") from None
        self.path.with_suffix(".meta.json").write_text(text + "\n")
        return self.path

    def abort(self) -> None:
        """Stop the writer thread and close the file without metadata (an unusable, partial file)."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or RuntimeError("aborted")
        if self._seg is not None:
            self._seg[1].close()
            self._seg[0].unlink(missing_ok=True)
            self._seg = None
        for _start, seg in self._held or ():
            seg.unlink(missing_ok=True)
        self._held = None
        self._queue.put(None)
        self._thread.join(timeout=10)
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the staging directory holding it is removed anyway
            pass
