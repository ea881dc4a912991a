"""Recorded traces: an event table in Parquet plus a metadata record.

The event table has one row per ring-buffer event (columns in
``probes.event.TRACE_COLUMNS`` plus ``function``, the documented name of the
probed function). The metadata record (a JSON object) is stored twice: inside
the Parquet file's schema metadata under the key ``callpath`` (so one file is
self-contained) and beside it as ``<name>.meta.json`` for people and ``jq``.

Metadata keys: ``kernel`` (release), ``mechanism`` (how the functions were
attached, one line), ``plan`` (probe plan dict: each function's ``probe``),
``specs`` (files read), ``events``, ``lost`` (events the kernel dropped),
``lost_per_cpu`` (the same per CPU, index = CPU), ``workloads``, ``started``/
``ended`` (ISO-8601 UTC), ``host`` (machine name), ``lab`` (lab VM facts or null),
``mode`` (``events`` or ``aggregate``), ``probes`` (``auto``/``kprobe``/``fentry``
as asked), ``filters`` (in-kernel filters: ``netns`` inode, ``ifindex``, ``tgid``),
``aggregate`` (counting mode: the in-kernel counts, see ``probes/record.py``).

Traces are written whole by :func:`write_trace`, or in row groups while the run
goes on by :class:`probes.stream.TraceStream`; both read the same.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"callpath"

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts_ns", pa.uint64()),
        ("kind", pa.uint8()),
        ("func_id", pa.uint32()),
        ("function", pa.string()),
        ("tid", pa.uint32()),
        ("tgid", pa.uint32()),
        ("cpu", pa.uint32()),
        ("skb", pa.uint64()),
        ("ifindex", pa.int32()),
        ("netns", pa.uint32()),
        ("retval", pa.int64()),
        ("comm", pa.string()),
        ("mechanism", pa.string()),
    ]
)

#: String columns: :func:`read_trace` returns them as pandas categoricals (dictionary-encoded).
STRING_COLUMNS = ("function", "comm", "mechanism")
#: :data:`SCHEMA` with the string columns dictionary-encoded (what :func:`read_trace` reads into).
READ_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in STRING_COLUMNS else f
                         for f in SCHEMA])

#: How an event was recorded (the ``mechanism`` column).
MECHANISMS = {
    "kprobe": "kprobe/kretprobe with bcc, ring buffer",
    "fentry": "fentry/fexit (BPF trampoline) with bcc, ring buffer",
    "function_graph": "ftrace function_graph tracer at boot (kernel command line)",
    "kprobe_events": "tracefs kprobe events while the module loaded",
    "inline-site": "entry-only kprobe at an inline site (symbol+offset from DWARF), no return",
}


class TraceError(ValueError):
    """A trace file is missing, unreadable or not a callpath trace."""


@dataclass
class Trace:
    """Events and metadata of one recording.

    Attributes:
        events: DataFrame with the columns of :data:`SCHEMA`, arrival order.
        meta: the metadata record (see module docstring).
    """

    events: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        return self.meta.get("kernel", "unknown")


def empty_events() -> pd.DataFrame:
    """An event table with the right columns and no rows."""
    return SCHEMA.empty_table().to_pandas()


def events_from_rows(rows: list[tuple], id_to_name: dict[int, str] | None = None, mechanism: str = "kprobe") -> pd.DataFrame:
    """Build the event table from decoded rows.

    Args:
        rows: tuples in ``probes.event.TRACE_COLUMNS`` order (``comm`` as bytes or
            str), optionally with the function name as a 13th field (ftrace text).
        id_to_name: func_id -> documented function name, for rows without a name.
        mechanism: a key of :data:`MECHANISMS`.
    """
    cols = ["seq", "ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval", "comm"]
    if rows and len(rows[0]) == 13:
        cols = cols + ["function"]
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    if len(df):
        df["comm"] = [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in df["comm"]]
    if "function" not in df:
        names = id_to_name or {}
        df["function"] = df["func_id"].map(lambda i: names.get(int(i), f"#{i}")) if len(df) else pd.Series(dtype=str)
    df["mechanism"] = mechanism
    table = pa.Table.from_pandas(df[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    return table.to_pandas()


def concat_events(*tables: pd.DataFrame) -> pd.DataFrame:
    """Join event tables of several mechanisms; ``seq`` stays ordered per table."""
    parts = [t for t in tables if len(t)]
    if not parts:
        return tables[0] if tables else empty_events()
    out = []
    offset = 0
    for t in parts:
        t = t.copy()
        t["seq"] = t["seq"] + offset
        offset = int(t["seq"].max()) + 1
        out.append(t)
    return pd.concat(out, ignore_index=True)


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as Parquet at ``path`` and its metadata at ``<path stem>.meta.json``.

    Returns the Parquet path. Raises ``OSError`` when the directory is not writable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(trace.events, schema=SCHEMA, preserve_index=False)
    meta_json = json.dumps(trace.meta, indent=2, sort_keys=True, default=str)
    table = table.replace_schema_metadata({META_KEY: meta_json.encode()})
    pq.write_table(table, path, compression="zstd")
    path.with_suffix(".meta.json").write_text(meta_json + "\n")
    return path


def read_meta(path: str | Path) -> dict:
    """The metadata record of a trace file, read from its footer only (no events decoded).

    Raises:
        TraceError: not a Parquet trace, or no/bad callpath metadata.
    """
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: not a Parquet trace ({str(err).splitlines()[0] if str(err) else err!r})") from None
    if raw is None:
        raise TraceError(f"{path}: Parquet file without callpath metadata (not written by callpath)")
    return check_meta(raw, str(path))


def copy_trace(src: str | Path, dst: str | Path, meta: dict) -> Path:
    """Copy the trace ``src`` to ``dst`` with the metadata record ``meta``, one row group at a
    time (memory: one row group, whatever the trace's size). ``<dst stem>.meta.json`` is written too.

    Raises:
        TraceError: ``src`` is not a trace with the columns of :data:`SCHEMA`.
        OSError: ``dst`` cannot be written.
    """
    dst = Path(dst)
    try:
        pf = pq.ParquetFile(src)
        if pf.schema_arrow.names != SCHEMA.names:
            raise TraceError(f"{src}: trace columns {pf.schema_arrow.names} differ from {SCHEMA.names}")
        meta_json = json.dumps(meta, indent=2, sort_keys=True, default=str)
        with pq.ParquetWriter(dst, SCHEMA, compression="zstd", store_schema=False) as w:
            for i in range(pf.metadata.num_row_groups):
                w.write_table(pf.read_row_group(i).cast(SCHEMA))
            w.add_key_value_metadata({META_KEY: meta_json.encode()})
    except pa.ArrowException as err:
        raise TraceError(f"{src}: cannot copy the trace ({str(err).splitlines()[0]})") from None
    dst.with_suffix(".meta.json").write_text(meta_json + "\n")
    return dst


def read_trace(path: str | Path) -> Trace:
    """Read a trace written by :func:`write_trace` (a trace file or a folder holding ``trace.parquet``).

    Returns:
        a :class:`Trace` whose events have the columns of :data:`SCHEMA`; the
        :data:`STRING_COLUMNS` are pandas categoricals (about 60 bytes per event).

    Raises:
        TraceError: the file does not exist, is not a regular file, is not Parquet,
            lacks callpath metadata, its metadata fails :func:`check_meta`, or its
            columns have the wrong types.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            path = path / "trace.parquet"
            mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as err:
        why = "symlink loop" if err.errno == errno.ELOOP else err.strerror
        raise TraceError(f"{path}: cannot read the trace: {why}") from None
    if not stat.S_ISREG(mode):
        raise TraceError(f"{path}: not a regular file (a trace is a Parquet file)")
    try:
        pf = pq.ParquetFile(path, read_dictionary=list(STRING_COLUMNS))
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: not a Parquet trace ({str(err).splitlines()[0] if str(err) else err!r})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{path}: Parquet file without callpath metadata (not written by callpath)")
    meta = check_meta(raw, str(path))
    # traces written before the mechanism column existed: every event is a kprobe's
    missing = [n for n in SCHEMA.names if n not in schema.names and n != "mechanism"]
    if missing:
        raise TraceError(f"{path}: trace lacks columns {', '.join(missing)}")
    try:
        events = _read_events(pf, [n for n in SCHEMA.names if n in schema.names])
    except (pa.ArrowException, ValueError, OSError) as err:
        raise TraceError(f"{path}: columns of the wrong type ({str(err).splitlines()[0]})") from None
    return Trace(events=events, meta=meta)


def _read_events(pf: pq.ParquetFile, columns: list[str], batch_rows: int = 1 << 20) -> pd.DataFrame:
    """The event table of ``pf``, decoded a batch at a time straight into numpy arrays
    (peak memory: the table plus one batch). String columns become categoricals with
    one dictionary for the whole file. Raises ValueError on nulls or wrong types."""
    n = pf.metadata.num_rows
    out: dict[str, np.ndarray] = {f.name: np.empty(n, dtype=f.type.to_pandas_dtype())
                                  for f in SCHEMA if f.name not in STRING_COLUMNS}
    codes = {c: np.empty(n, dtype=np.int32) for c in STRING_COLUMNS}
    names: dict[str, dict[str, int]] = {c: {} for c in STRING_COLUMNS}
    pool = pa.default_memory_pool()
    if "mechanism" not in columns:
        names["mechanism"]["kprobe"] = 0
        codes["mechanism"][:] = 0
    at = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=True):
        k = batch.num_rows
        for name in columns:
            col = batch.column(name)
            if col.null_count:
                raise ValueError(f"column {name} has {col.null_count} missing values")
            if name in STRING_COLUMNS:
                if not pa.types.is_dictionary(col.type):
                    col = col.cast(pa.string()).dictionary_encode()
                known = names[name]
                remap = np.array([known.setdefault(str(v), len(known)) for v in col.dictionary.cast(pa.string()).to_pylist()]
                                 + [-1], dtype=np.int32)
                codes[name][at:at + k] = remap[col.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
            else:
                out[name][at:at + k] = col.cast(SCHEMA.field(name).type).to_numpy(zero_copy_only=False)
        at += k
        del batch
        pool.release_unused()  # arrow's allocator keeps freed pages otherwise: the peak would be the file decoded twice
    if at != n:
        raise ValueError(f"{at} rows decoded, {n} in the file footer")
    for c in STRING_COLUMNS:
        out[c] = pd.Categorical.from_codes(codes.pop(c), categories=pd.Index(list(names[c]), dtype=str))
    return pd.DataFrame({name: out[name] for name in SCHEMA.names}, copy=False)


def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean",
                                         int: "integer", float: "number"}.get(type(value), type(value).__name__)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


#: Metadata keys callpath reads, with a test and what the test wants.
_META_FIELDS = {
    "kernel": (lambda v: isinstance(v, str), "a string"),
    "mechanism": (lambda v: isinstance(v, str), "a string"),
    "where": (lambda v: isinstance(v, str), "a string"),
    "host": (lambda v: isinstance(v, str), "a string"),
    "started": (lambda v: isinstance(v, str), "a string"),
    "ended": (lambda v: isinstance(v, str), "a string"),
    "events": (_is_count, "a count (integer >= 0)"),
    "lost": (_is_count, "a count (integer >= 0)"),
    "specs": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "an array of file names"),
    "workloads": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "an array of objects"),
    "attach_failed": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                      "an object of strings"),
    "plan": (lambda v: isinstance(v, dict) and isinstance(v.get("functions", {}), dict)
             and all(isinstance(fp, dict) and isinstance(fp.get("status", ""), str) for fp in v.get("functions", {}).values()),
             "an object whose 'functions' maps names to objects"),
    "lab": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "lost_per_cpu": (lambda v: isinstance(v, list) and all(_is_count(x) for x in v), "an array of counts"),
    "mode": (lambda v: v in ("events", "aggregate"), "'events' or 'aggregate'"),
    "filters": (lambda v: isinstance(v, dict), "an object"),
    "aggregate": (lambda v: isinstance(v, dict) and all(isinstance(v.get(k, []), list) for k in ("paths", "order", "hist")),
                  "an object whose paths, order and hist are arrays"),
}


def check_meta(raw: bytes | str, source: str) -> dict:
    """Parse and check a trace's metadata record before anything is computed or written from it.

    Args:
        raw: the JSON text stored under :data:`META_KEY`.
        source: the trace's name for messages.

    Returns:
        The metadata dict (keys in the module docstring; unknown keys are kept).

    Raises:
        TraceError: ``source: ...`` naming the field when the record is not JSON,
            not an object, or a field callpath reads has the wrong type.
    """
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise TraceError(f"{source}: callpath metadata is not JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{source}: callpath metadata is {_type_name(meta)}, not a JSON object")
    for key, (ok, want) in _META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise TraceError(f"{source}: metadata field {key!r} should be {want}, found {_type_name(meta[key])}")
    return meta
