"""Benchmark: the trace converter (probes/convert.py), raw spool records -> Parquet. Prints figures.

The records are the real lab fixture's (tests/fixtures/lab-6.1.0-56-amd64-all-paths.parquet,
recorded on Debian 6.1.0-56-amd64) turned back into the ring buffer's 40-byte
records and replicated end to end in time to ``--events`` (each replica with
later timestamps and its own skb addresses, as a longer run would have). One
spool segment of them is converted with callpath's Parquet settings and with
Parquet's defaults (dictionary on every column, plain encoding), printing
events/s and bytes per event of each.

During a recording the converter runs beside the traffic (nice 19), so its
CPU per event is part of what per-event recording costs a busy host
(benchmarks/bench_overhead.py).

    python benchmarks/bench_convert.py                  # 1M events
    python benchmarks/bench_convert.py --events 5e6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from callpath.probes import convert  # noqa: E402
from callpath.probes.event import EVENT_DTYPE  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"


def records(n: int) -> tuple[np.ndarray, dict[int, str], dict[int, bytes]]:
    """``n`` EVENT_DTYPE records replicated from the fixture, func_id -> name and tid -> comm."""
    import pyarrow.parquet as pq

    df = pq.read_table(FIXTURE).to_pandas()
    base = np.zeros(len(df), EVENT_DTYPE)
    for f in ("ts_ns", "kind", "func_id", "tid", "tgid", "cpu", "ifindex", "netns"):
        base[f] = df[f].to_numpy()
    ret = df["kind"].to_numpy() == 1  # an entry's arg is its skb, a return's its return value
    base["arg"] = np.where(ret, df["retval"].to_numpy().astype(np.int64).view(np.uint64), df["skb"].to_numpy())
    names = dict(zip(df["func_id"].astype(int), df["function"].astype(str)))
    comms = {int(t): str(c).encode()[:15] for t, c in zip(df["tid"], df["comm"])}
    reps = -(-n // len(base))
    span = int(base["ts_ns"].max() - base["ts_ns"].min()) + 1
    out = np.concatenate([base] * reps)[:n]
    r = np.repeat(np.arange(reps, dtype=np.uint64), len(base))[:n]
    out["ts_ns"] += r * np.uint64(span)
    skb = (out["kind"] == 0) & (out["arg"] != 0)
    out["arg"] = np.where(skb, out["arg"] + r * np.uint64(1 << 20), out["arg"])
    return out, names, comms


def run(label: str, seg: Path, names: dict[int, str], out: Path, n: int, dictionary, deltas, comms=None) -> None:
    saved = convert.DICT_COLUMNS, convert.DELTA_COLUMNS
    convert.DICT_COLUMNS, convert.DELTA_COLUMNS = dictionary, deltas
    try:
        c = convert.Converter(out, names, 65536)
    finally:
        convert.DICT_COLUMNS, convert.DELTA_COLUMNS = saved
    t0 = time.perf_counter()
    c.segment(seg, 0, {f: "fentry" for f in names}, comms=comms)
    c.close("{}")
    dt = time.perf_counter() - t0
    print(f"{label:44s} {n / dt:12,.0f} events/s {out.stat().st_size / n:7.2f} bytes/event", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, default=1e6, help="events to convert (default 1e6)")
    args = ap.parse_args(argv)
    n = int(args.events)
    recs, names, comms = records(n)
    print(f"load average {os.getloadavg()[0]:.2f}; {n:,} events from {FIXTURE.name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="callpath-bench-") as tmp:
        seg = Path(tmp) / "seg"
        recs.tofile(seg)  # Converter.segment() only reads it
        for label, dictionary, deltas in (("callpath (dictionary where it pays, deltas)", convert.DICT_COLUMNS,
                                           convert.DELTA_COLUMNS),
                                          ("Parquet defaults (zstd, dictionary everywhere)", True, None)):
            run(label, seg, names, Path(tmp) / "t.parquet", n, dictionary, deltas, comms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
