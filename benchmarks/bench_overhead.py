"""Benchmark: probe overhead on a known workload. Prints seconds per run and per packet.

Runs the built-in macvlan workload twice on a kprobe-capable kernel: without
probes, then with every planned kprobe/kretprobe of the shipped specs attached.
Where the running kernel has no kprobes (the dev VM), it re-runs itself in the
lab VM.

    python benchmarks/bench_overhead.py [--packets N]

Under QEMU TCG the absolute figures say little about real hardware; the ratio
is the useful number.
"""

import argparse
import sys
import time
from pathlib import Path

from callpath.analysis.readers import read_specs
from callpath.probes import kernel
from callpath.probes.btf import load_kernel_btf
from callpath.probes.labvm import choose_kernel, run_in_lab
from callpath.probes.loader import Recorder
from callpath.probes.plan import build_plan
from callpath.probes.modindex import documented_modules, index_or_none, modules_to_load
from callpath.probes.workload import run_workload


def inside(packets: int) -> None:
    specs = read_specs([str(Path(__file__).resolve().parent.parent / "specs")])
    index = index_or_none(kernel.kernel_release())
    syms = kernel.load_symbols()
    with kernel.modules_loaded(modules_to_load(specs, index, syms.text, syms.clones)):
        syms = kernel.load_symbols()
        plan = build_plan(specs, syms, load_kernel_btf(documented_modules(specs, syms.text, syms.clones)), index=index)
        run_workload("macvlan", packets=5)  # warm up: module paths, page cache
        t0 = time.monotonic()
        base = run_workload("macvlan", packets=packets)
        t_base = time.monotonic() - t0
        with Recorder(plan) as rec:
            t0 = time.monotonic()
            probed = run_workload("macvlan", packets=packets)
            t_probed = time.monotonic() - t0
    n = sum(base.sent.values())
    print(f"kernel {kernel.kernel_release()}: macvlan workload, {n} datagrams, {len(plan.probed())} functions probed")
    print(f"  without probes: {t_base:.2f} s ({t_base / n * 1e6:.0f} us per datagram)")
    print(f"  with probes:    {t_probed:.2f} s ({t_probed / n * 1e6:.0f} us per datagram), "
          f"{len(rec.rows)} events, {rec.lost} lost")
    print(f"  ratio: {t_probed / t_base:.2f}x")
    assert sum(probed.sent.values()) == n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=200)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside or kernel.has_kprobes():
        inside(args.packets)
        return 0
    lab = choose_kernel()
    return run_in_lab(lab, [sys.executable, "-u", __file__, "--inside", "--packets", str(args.packets)], [],
                      progress=lambda m: print(m, flush=True))


if __name__ == "__main__":
    sys.exit(main())
