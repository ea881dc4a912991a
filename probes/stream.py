"""Stream ring-buffer events into a Parquet trace while the run goes on (bounded memory).

The :class:`probes.loader.Recorder` hands its ``sink`` numpy batches
(``probes.event.EVENT_DTYPE``, 72-byte records) from its poll thread.
:class:`TraceStream` is such a sink: it numbers the events in arrival order
(``seq``), buffers at most ``batch_rows`` of them, and hands each full buffer
to a writer thread through a queue of at most ``queue_batches`` buffers; the
writer thread turns a buffer into one Parquet row group (function name and
mechanism from the plan, ``comm`` decoded) and appends it with
``pyarrow.parquet.ParquetWriter`` (zstd). So memory holds at most
``(queue_batches + 2) * batch_rows`` events however long the run is; when the
disk is slower than the probes, the queue fills and the sink waits, the ring
buffer fills, and the kernel counts lost events (never silent).

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
#: Full buffers that may wait for the writer thread before the sink blocks.
QUEUE_BATCHES = 2
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
        batch_rows: events per row group and per hand-off (>= 1).
        queue_batches: full buffers waiting for the writer thread before the sink blocks (>= 1).

    Attributes:
        events: events received so far (int).
        written: events written as row groups so far.
        peak_buffered: most events ever held in the sink's buffer (<= ``batch_rows``).
        row_groups: row groups written.

    Raises:
        StreamError: the file cannot be created (from the constructor), or a
            write failed (from the sink after the failure, and from :meth:`close`).
    """

    def __init__(self, path: str | Path, names: dict[int, str] | None = None, mechanism=None,
                 batch_rows: int = BATCH_ROWS, queue_batches: int = QUEUE_BATCHES):
        import pyarrow as pa  # noqa: PLC0415 - imported before the probes attach, not in the poll thread
        import pyarrow.parquet as pq  # noqa: PLC0415

        from ..analysis.trace import SCHEMA  # noqa: PLC0415

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
        self._pa, self._schema = pa, SCHEMA
        try:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd", store_schema=False,
                                            write_statistics=STAT_COLUMNS)
        except (OSError, pa.ArrowException) as err:
            raise StreamError(f"{self.path}: cannot write the trace: {err}") from None
        self.events = 0
        self.written = 0
        self.peak_buffered = 0
        self.row_groups = 0
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._queued = 0  # events handed to the writer: the next seq
        self._queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="callpath-trace-writer", daemon=True)
        self._thread.start()

    # -- the sink (poll thread) ------------------------------------------
    def __call__(self, batch: np.ndarray) -> None:
        """Take one batch of events (EVENT_DTYPE records, arrival order); cheap unless a buffer fills."""
        if self._error is not None:
            raise StreamError(f"{self.path}: writing the trace failed: {self._error}")
        batch = np.asarray(batch)
        if batch.dtype != EVENT_DTYPE:
            batch = batch.view(EVENT_DTYPE) if batch.dtype.itemsize == EVENT_DTYPE.itemsize else batch.astype(EVENT_DTYPE)
        i, n = 0, len(batch)
        while i < n:
            piece = batch[i:i + self.batch_rows - self._pending_n].copy()  # the caller may reuse its buffer
            self._pending.append(piece)
            self._pending_n += len(piece)
            i += len(piece)
            self.peak_buffered = max(self.peak_buffered, self._pending_n)
            if self._pending_n >= self.batch_rows:
                self._hand_off()
        self.events += n

    def _hand_off(self) -> None:
        if not self._pending_n:
            return
        chunk = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        start = self._queued
        self._pending, self._pending_n = [], 0
        while True:  # blocks while the writer is behind; never forever if it died
            if self._error is not None:
                raise StreamError(f"{self.path}: writing the trace failed: {self._error}")
            try:
                self._queue.put((start, chunk), timeout=0.5)
                break
            except queue.Full:
                continue
        self._queued += len(chunk)

    # -- writer thread ----------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain so the sink never blocks; the error is raised there
            start, chunk = item
            try:
                self._write(self.table_of(chunk, start))
            except BaseException as err:  # noqa: BLE001 - surfaced in the sink and close()
                self._error = err

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
            inv, pa.array([self.names.get(int(f), f"#{int(f)}") for f in uniq], pa.string())).cast(pa.string())
        mechanism = pa.DictionaryArray.from_arrays(
            inv, pa.array([self._mech(int(f)) for f in uniq], pa.string())).cast(pa.string())
        cuniq, cinv = np.unique(chunk["comm"], return_inverse=True)
        comm = pa.DictionaryArray.from_arrays(
            cinv.astype(np.int32),
            pa.array([c.split(b"\0", 1)[0].decode("utf-8", "replace") for c in cuniq.tolist()], pa.string()),
        ).cast(pa.string())
        cols = {
            "seq": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "ts_ns": pa.array(chunk["ts_ns"]), "kind": pa.array(chunk["kind"]), "func_id": pa.array(fids),
            "function": function, "tid": pa.array(chunk["tid"]), "tgid": pa.array(chunk["tgid"]),
            "cpu": pa.array(chunk["cpu"]), "skb": pa.array(chunk["skb"]), "ifindex": pa.array(chunk["ifindex"]),
            "netns": pa.array(chunk["netns"]), "retval": pa.array(chunk["retval"]), "comm": comm,
            "mechanism": mechanism,
        }
        return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in self._schema], schema=self._schema)

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
        return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in self._schema], schema=self._schema)

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
        self._queue.put(None)
        self._thread.join(timeout=10)
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the staging directory holding it is removed anyway
            pass
