"""Benchmark: analysis of the recorded lab trace (no root). Prints seconds per stage.

    python benchmarks/bench_analysis.py
"""

import time
from pathlib import Path

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.latency import hot_path_functions, latency_stats, packet_samples
from callpath.analysis.readers import read_specs
from callpath.analysis.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent
t0 = time.perf_counter()
trace = read_trace(ROOT / "tests" / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet")
t1 = time.perf_counter()
forest = build_forest(trace.events)
t2 = time.perf_counter()
plan = trace.meta["plan"]["functions"]
check_specs(read_specs([str(ROOT / "specs")]), forest, plan)
t3 = time.perf_counter()
latency_stats(packet_samples(forest, hot_path_functions(plan)))
t4 = time.perf_counter()
n = len(trace.events)
print(f"{n} events ({trace.kernel}): read {t1 - t0:.3f} s, call trees {t2 - t1:.3f} s "
      f"({n / (t2 - t1):,.0f} events/s), conformance {t3 - t2:.3f} s, latency {t4 - t3:.3f} s")
