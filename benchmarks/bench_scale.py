"""Benchmark: analysis at scale (issue 11). Prints figures; asserts nothing.

Builds traces of about 1M and 10M events by replicating the real lab fixture
(tests/fixtures/lab-6.1.0-56-amd64-all-paths.parquet) end to end in time:
replica ``r`` gets its own tids (and idle-task CPUs), later timestamps and seq
numbers, and its own skb addresses, so nesting and packet identity stay as in
the original and every verdict's count is the original's times the number of
replicas. Then, for each size:

* one process runs the stages in order (read, rebuild, match, latency,
  packets, report JSON+Markdown, plots), printing seconds, events/s and the
  process's peak RSS so far after each stage (``ru_maxrss``; it never goes down);
* ``callpath report TRACE --out DIR`` runs as a child under ``/usr/bin/time -v``
  for its wall time and peak RSS.

    python benchmarks/bench_scale.py                 # 1M and 10M
    python benchmarks/bench_scale.py --sizes 1e6     # 1M only
    python benchmarks/bench_scale.py --keep /tmp/b   # keep the traces there

The load average is printed first: other work on the machine (a lab VM under
QEMU TCG) slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
FORK_FUNCTIONS = ("skb_clone", "skb_copy", "skb_copy_expand", "__pskb_copy_fclone", "pskb_copy")


def replicate(src: Path, replicas: int, dst: Path) -> int:
    """Write ``replicas`` copies of the trace ``src`` end to end as one trace at ``dst``; return its events."""
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[b"callpath"])
    n = table.num_rows
    col = {c: table.column(c).to_numpy() for c in table.column_names if c not in ("function", "comm", "mechanism")}
    r = np.repeat(np.arange(replicas, dtype=np.int64), n)

    def tile(a):
        return np.tile(a, replicas)

    span = int(col["ts_ns"].max()) + 1_000_000
    tid_step = int(col["tid"].max()) + 1
    cpu_step = int(col["cpu"].max()) + 1
    out = {
        "seq": tile(col["seq"]) + r * (int(col["seq"].max()) + 1),
        "ts_ns": (tile(col["ts_ns"]).astype(np.int64) + r * span).astype(np.uint64),
        "kind": tile(col["kind"]),
        "func_id": tile(col["func_id"]),
    }
    tid = tile(col["tid"]).astype(np.int64)
    cpu = tile(col["cpu"]).astype(np.int64)
    out["tid"] = np.where(tid != 0, tid + r * tid_step, 0).astype(np.uint32)
    out["tgid"] = np.where(tid != 0, tile(col["tgid"]).astype(np.int64) + r * tid_step, 0).astype(np.uint32)
    out["cpu"] = np.where(tid == 0, cpu + r * cpu_step, cpu).astype(np.uint32)
    skb = tile(col["skb"])
    out["skb"] = np.where(skb != 0, skb + (r.astype(np.uint64) << np.uint64(32)), 0).astype(np.uint64)
    out["ifindex"] = tile(col["ifindex"])
    out["netns"] = tile(col["netns"])
    func = table.column("function").to_numpy(zero_copy_only=False)
    fork_ret = np.isin(func, FORK_FUNCTIONS) & (col["kind"] == 1) & (col["retval"] != 0)
    ret = tile(col["retval"])
    shifted = (ret.view(np.uint64) + (r.astype(np.uint64) << np.uint64(32))).view(np.int64)
    out["retval"] = np.where(tile(fork_ret), shifted, ret)
    arrays = []
    for field in table.schema:
        if field.name in out:
            arrays.append(pa.array(out[field.name], type=field.type))
        else:  # strings: dictionary indices tiled, then plain strings as the schema says
            d = table.column(field.name).combine_chunks().dictionary_encode()
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(tile(d.indices.to_numpy(zero_copy_only=False))),
                                                         d.dictionary).cast(field.type))
    meta.update(events=n * replicas, specs=[str(ROOT / "specs")])
    big = pa.Table.from_arrays(arrays, schema=table.schema.remove_metadata())
    big = big.replace_schema_metadata({b"callpath": json.dumps(meta).encode()})
    pq.write_table(big, dst, compression="zstd", row_group_size=1 << 20)
    dst.with_suffix(".meta.json").write_text(json.dumps(meta))
    return n * replicas


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stages(trace_path: Path, out_dir: Path) -> None:
    """Run the analysis stages on one trace in this process and print one line per stage."""
    from callpath.analysis import plots, report
    from callpath.analysis.calltree import build_forest
    from callpath.analysis.conformance import check_specs
    from callpath.analysis.journeys import report_blocks
    from callpath.analysis.latency import hot_path_functions, latency_stats, packet_samples
    from callpath.analysis.packets import assign_packets
    from callpath.analysis.readers import read_specs
    from callpath.analysis.trace import read_trace

    specs = read_specs([str(ROOT / "specs")])
    rows = []

    def stage(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        rows.append((name, time.perf_counter() - t0, time.process_time() - c0, peak_mb()))
        return value

    trace = stage("read", lambda: read_trace(trace_path))
    n = len(trace.events)
    plan = trace.meta["plan"]["functions"]
    forest = stage("rebuild", lambda: build_forest(trace.events))
    results = stage("match", lambda: check_specs(specs, forest, plan, trace.meta.get("attach_failed")))
    stage("latency", lambda: latency_stats(packet_samples(forest, hot_path_functions(plan))))
    packets = stage("packets", lambda: assign_packets(forest, plan))
    stage("journeys", lambda: report_blocks(specs, forest, plan, packets, trace.meta.get("attach_failed")))
    jobs = []
    rep = stage("build_report", lambda: report.build_report(trace, specs, out_dir, plot_jobs=jobs))
    out_dir.mkdir(parents=True, exist_ok=True)
    stage("JSON+MD", lambda: ((out_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str)),
                              (out_dir / "report.md").write_text(report.render_markdown(rep))))
    stage(f"plots ({len(jobs)})", lambda: plots.draw(jobs, out_dir))
    print(f"  {n:,} events, {len(forest.frames):,} frames; per stage (wall s, CPU s, events/s, peak RSS so far):")
    for name, wall, cpu, rss in rows:
        print(f"    {name:<15} {wall:7.2f} s  {cpu:7.2f} s CPU  {n / max(wall, 1e-9):>13,.0f} ev/s  {rss:7.0f} MB")
    obs = sum(s.verdict in ("observed", "observed-out-of-order", "successor-observed")
              for _, ps in results for p in ps for s in p.steps)
    counts = [s.count for _, ps in results for p in ps for s in p.steps]
    print(f"  observed steps: {obs}; sum of step counts: {sum(counts):,}; paths: {len(rep['paths'])}")
    print("  RESULT " + json.dumps({"n": n, "counts": counts, "verdicts": [
        s.verdict for _, ps in results for p in ps for s in p.steps]}))


def cli_report(trace_path: Path, out_dir: Path) -> tuple[float, float]:
    """``callpath report`` as a child process: ``(wall s, peak RSS MB)``."""
    exe = Path(sys.executable).with_name("callpath")
    cmd = [str(exe), "report", str(trace_path), "--spec", str(ROOT / "specs"), "--out", str(out_dir)]
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if done.returncode:
        print("  callpath report failed:", done.stderr.strip().splitlines()[-3:])
    return wall, (int(m.group(1)) / 1024 if m else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=float, default=[1e6, 1e7], help="approximate event counts")
    ap.add_argument("--keep", metavar="DIR", help="write the traces and reports here and keep them")
    ap.add_argument("--stages-of", metavar="TRACE", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--out", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stages_of:
        stages(Path(args.stages_of), Path(args.out))
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} CPUs")
    base = pq.read_metadata(FIXTURE).num_rows
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="callpath-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    reference = None
    for size in args.sizes:
        reps = max(1, round(size / base))
        path = work / f"trace-{reps}x.parquet"
        t0 = time.perf_counter()
        n = replicate(FIXTURE, reps, path)
        print(f"\n{n:,} events ({reps} x the fixture), built in {time.perf_counter() - t0:.1f} s, "
              f"{path.stat().st_size / 2**20:.0f} MB Parquet")
        # a fresh process per size, so the peak RSS is this size's
        child = subprocess.run([sys.executable, __file__, "--stages-of", str(path), "--out", str(work / f"stages-{reps}")],
                               capture_output=True, text=True)
        print("\n".join(line for line in child.stdout.splitlines() if not line.startswith("  RESULT ")))
        if child.returncode:
            print(child.stderr[-2000:])
        result = next((json.loads(line[9:]) for line in child.stdout.splitlines() if line.startswith("  RESULT ")), None)
        if result and reference is None:
            reference = (reps, result)
        elif result:
            r0, res0 = reference
            same = res0["verdicts"] == result["verdicts"] and all(
                c * r0 == c0 * reps for c, c0 in zip(result["counts"], res0["counts"]))
            print(f"  same verdicts as the {r0}x trace, counts scaled by {reps / r0:g}: {same}")
        wall, rss = cli_report(path, work / f"report-{reps}")
        print(f"  callpath report: {wall:.1f} s wall, peak RSS {rss:,.0f} MB  (load average now {os.getloadavg()[0]:.2f})")
        if not args.keep:
            path.unlink()
    print(f"\nfiles in {work}" + ("" if args.keep else " (traces removed)"))


if __name__ == "__main__":
    main()
