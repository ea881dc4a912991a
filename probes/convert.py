"""The trace converter process: spool segments of raw events -> Parquet row groups.

:class:`probes.stream.TraceStream` (the recording process) appends the raw
40-byte records the ring buffer hands over to spool segment files, and starts
this module as a **process of its own** (``python -m callpath.probes.convert``,
nice 19, a session of its own so a terminal's Ctrl-C reaches only the
recorder, which then stops it). A separate process rather than a thread:
a converter thread at nice 19 shares the recorder's GIL, and when the
scheduler leaves it waiting behind the traffic while it holds the GIL, the
ring-buffer poll thread waits too and the kernel drops events (measured in the
lab VM, 6.1.0-56: 76,318 events lost in one 5-flood run with a converter
thread, 253 with the conversion moved after the run).

Protocol: pickled tuples. The recorder writes requests to the converter's
stdin; the converter answers on the file descriptor that was its stdout
(stdout itself is pointed at stderr, so a stray print cannot corrupt the
answers):

==========================================  =========================================
request                                     answer
==========================================  =========================================
``("open", path, names, batch_rows)``       none, or ``("error", text)``
``("segment", start, seg, mech, n, comms)``  ``("progress", written, row_groups, peak)``
``("rows", rows, mechanism, start)``        ``("progress", ...)``
``("close", meta_json_text)``               ``("done", written, row_groups, peak)``
==========================================  =========================================

``seg_path`` holds EVENT_DTYPE records numbered from ``start`` (``seq``); it is
deleted once read, converted or not, in row groups of at most ``n`` events
(smaller while the recording goes on: a smaller working set). ``comms`` maps
tid -> thread name (bytes): the ``comms`` BPF map as the recorder read it when
it handed the segment over (records carry no name: bpf/callpath_event.h), or
None: the same as the last one sent. ``mech`` maps func_id -> mechanism
(resolved by the recorder when it hands the segment over, after late modules
attached), or is None: the same as the last one sent (requests stay small, so
the pipe never fills and never blocks the recorder's poll thread). After a failure the converter answers ``("error",
text)`` once, then only deletes the segments it is handed, and answers
``close`` with ``("error", text)`` again. End of input without ``close``: the
recorder is gone (e.g. SIGKILL); the converter exits, leaving the partial file
to the recorder's staging sweep.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path

import numpy as np

from .event import EVENT_DTYPE, comm_name, split_arg

#: Columns with Parquet statistics (min/max); the others skip them to keep the footer small.
STAT_COLUMNS = ["seq", "ts_ns", "func_id"]
#: Columns dictionary-encoded: few distinct values per row group (an skb address recurs at
#: every probed function on the packet's path). The others (seq, ts_ns, retval) are nearly
#: all distinct, where a dictionary is work that Parquet throws away.
DICT_COLUMNS = ["kind", "func_id", "function", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "comm", "mechanism"]
#: Columns that only grow (numbered in arrival order; CLOCK_MONOTONIC stamps, nearly so):
#: stored as deltas, which zstd then finds little left in.
DELTA_COLUMNS = {"seq": "DELTA_BINARY_PACKED", "ts_ns": "DELTA_BINARY_PACKED"}


class Converter:
    """Writes one Parquet trace (``analysis.trace.READ_SCHEMA``, zstd) from EVENT_DTYPE records.

    Args:
        path: the file to create.
        names: func_id -> function name; unknown ids get ``#ID``.
        batch_rows: events per row group, and the most held in memory at once (>= 1).

    Attributes: ``written`` (rows written), ``row_groups``, ``peak_buffered`` (most events held at once).

    Raises:
        OSError, pyarrow.ArrowException: the file cannot be created or written.
    """

    def __init__(self, path: str | Path, names: dict[int, str], batch_rows: int):
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        from ..analysis.trace import READ_SCHEMA, STRING_COLUMNS  # noqa: PLC0415

        self._pa, self._schema, self._strings = pa, READ_SCHEMA, STRING_COLUMNS
        self.names = dict(names)
        self.batch_rows = batch_rows
        self.written = self.row_groups = self.peak_buffered = 0
        self.comms: dict[int, bytes] = {}  # tid -> thread name, as the recorder sent them
        # encodings measured on 1 M events (benchmarks/bench_convert.py): dictionary only where it pays
        # and deltas for seq/ts_ns write about 1.4x faster and a third of the bytes of Parquet's defaults
        self._writer = pq.ParquetWriter(Path(path), READ_SCHEMA, compression="zstd", store_schema=False,
                                        write_statistics=STAT_COLUMNS, use_dictionary=DICT_COLUMNS,
                                        column_encoding=DELTA_COLUMNS)

    def segment(self, seg: Path, start: int, mech: dict[int, str], rows: int | None = None,
                comms: dict[int, bytes] | None = None) -> None:
        """Convert one spool segment (records numbered from ``start``), ``rows`` at a time
        (default and most: ``batch_rows``); ``comms`` (tid -> name) replaces the names
        known so far, None keeps them."""
        rows = min(rows or self.batch_rows, self.batch_rows)
        if comms is not None:
            self.comms = dict(comms)
        with open(seg, "rb") as fh:
            while True:
                chunk = np.fromfile(fh, dtype=EVENT_DTYPE, count=rows)
                if not len(chunk):
                    return
                self.peak_buffered = max(self.peak_buffered, len(chunk))
                self.write(self.table_of(chunk, start, mech))
                start += len(chunk)

    def write(self, table) -> None:
        self._writer.write_table(table, row_group_size=max(len(table), 1))
        self.written += len(table)
        self.row_groups += 1

    def table_of(self, chunk: np.ndarray, start: int, mech: dict[int, str]):
        """One Arrow table (``analysis.trace.READ_SCHEMA``) from EVENT_DTYPE records numbered from ``start``."""
        pa = self._pa
        n = len(chunk)
        fids = chunk["func_id"]
        uniq, inv = np.unique(fids, return_inverse=True)
        inv = inv.astype(np.int32).ravel()
        function = pa.DictionaryArray.from_arrays(
            inv, pa.array([self.names.get(int(f), f"#{int(f)}") for f in uniq], pa.string()))
        mechanism = pa.DictionaryArray.from_arrays(
            inv, pa.array([mech.get(int(f), "kprobe") for f in uniq], pa.string()))
        # comm: joined by thread (tid 0: the idle task, named per CPU); few distinct keys per batch
        tids, cpus = chunk["tid"].astype(np.uint64), chunk["cpu"].astype(np.uint64)
        key = np.where(tids == 0, (np.uint64(1) << np.uint64(32)) | cpus, tids)
        _uk, first, cinv = np.unique(key, return_index=True, return_inverse=True)
        comm = pa.DictionaryArray.from_arrays(
            cinv.astype(np.int32).ravel(),
            pa.array([comm_name(int(chunk["tid"][i]), int(chunk["cpu"][i]), self.comms).split(b"\0", 1)[0]
                      .decode("utf-8", "replace") for i in first.tolist()], pa.string()),
        )
        skb, retval = split_arg(chunk["kind"], chunk["arg"])
        cols = {
            "seq": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "ts_ns": pa.array(chunk["ts_ns"]), "kind": pa.array(chunk["kind"]), "func_id": pa.array(fids),
            "function": function, "tid": pa.array(chunk["tid"]), "tgid": pa.array(chunk["tgid"]),
            "cpu": pa.array(chunk["cpu"]), "skb": pa.array(skb), "ifindex": pa.array(chunk["ifindex"]),
            "netns": pa.array(chunk["netns"]), "retval": pa.array(retval), "comm": comm,
            "mechanism": mechanism,
        }
        return pa.Table.from_arrays([cols[f.name] if f.name in self._strings else cols[f.name].cast(f.type)
                                     for f in self._schema], schema=self._schema)

    def rows(self, rows: list[tuple], mechanism: str, start: int) -> None:
        """Append decoded rows (``probes.event.TRACE_COLUMNS`` order, optional 13th field: name)."""
        pa = self._pa
        fields = ["seq", "ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval", "comm"]
        cols: dict[str, list] = {f: [r[i] for r in rows] for i, f in enumerate(fields)}
        cols["seq"] = [start + i for i in range(len(rows))]  # after the probe events, as concat_events numbers them
        cols["comm"] = [c.split(b"\0", 1)[0].decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                        for c in cols["comm"]]
        cols["function"] = [r[12] if len(r) > 12 else self.names.get(int(r[3]), f"#{r[3]}") for r in rows]
        cols["mechanism"] = [mechanism] * len(rows)
        self.write(pa.Table.from_arrays([pa.array(cols[f.name], pa.string()).dictionary_encode()
                                         if f.name in self._strings else pa.array(cols[f.name], f.type)
                                         for f in self._schema], schema=self._schema))

    def close(self, meta_text: str) -> None:
        """Put ``meta_text`` (JSON) in the file's key/value metadata under ``callpath`` and close it."""
        self._writer.add_key_value_metadata({b"callpath": meta_text.encode()})
        self._writer.close()

    def stats(self) -> tuple[int, int, int]:
        return self.written, self.row_groups, self.peak_buffered


def serve(inp, out) -> int:
    """Answer requests from ``inp`` on ``out`` (binary files) until ``close`` or end of input; exit status."""

    def answer(*msg) -> None:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    conv: Converter | None = None
    error: str | None = None
    mech: dict[int, str] = {}
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return 1  # the recorder is gone
        kind = msg[0]
        try:
            if kind == "open":
                _, path, names, batch_rows = msg
                conv = Converter(path, names, batch_rows)
            elif kind == "segment":
                _, start, seg, new_mech, rows, comms = msg
                mech = mech if new_mech is None else new_mech
                try:
                    if error is None and conv is not None:
                        conv.segment(Path(seg), start, mech, rows, comms)
                        answer("progress", *conv.stats())
                finally:
                    Path(seg).unlink(missing_ok=True)
            elif kind == "rows":
                _, rows, mechanism, start = msg
                if error is None and conv is not None:
                    conv.rows(rows, mechanism, start)
                    answer("progress", *conv.stats())
            elif kind == "close":
                if error is None and conv is not None:
                    conv.close(msg[1])
                    answer("done", *conv.stats())
                    return 0
                answer("error", error or "the trace file was never opened")
                return 1
        except Exception as err:  # noqa: BLE001 - told to the recorder, which raises StreamError
            if error is None:
                error = f"{type(err).__name__}: {err}" if not isinstance(err, OSError) else str(err)
                answer("error", error)
            if kind in ("open", "close"):
                return 1


def main() -> int:
    """Entry point of the converter process (started by :class:`probes.stream.TraceStream`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the recorder decides when to stop (and sets our nice value)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into the answers
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
