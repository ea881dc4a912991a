"""Benchmark: parse the running kernel's vmlinux BTF. Prints seconds per parse.

Run: python benchmarks/bench_btf.py   (measured 0.38 s on the 6.18 dev VM, 5.5 MB BTF)
"""
import time

from callpath.probes.btf import parse_btf

with open("/sys/kernel/btf/vmlinux", "rb") as fh:
    data = fh.read()
best = min((lambda t0: (parse_btf(data), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(f"vmlinux BTF: {len(data)} bytes, best of 5: {best:.3f} s per parse")
