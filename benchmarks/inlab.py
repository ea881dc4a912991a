"""Re-run a benchmark inside a lab VM when the running kernel has no kprobes.

The benchmarks (bench_overhead, bench_probe_cost, bench_memory) measure on a
kernel that allows kprobes; on one that does not (this project's CI host:
``CONFIG_KPROBES`` unset) each re-runs itself with ``--inside`` in a
virtme-ng guest, sharing one temporary directory read-write, and reads back
the JSON result the inner run left there.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from callpath.probes import runstate  # noqa: E402


def run_inside_lab(inner: Callable[[Path], list[str]], result_name: str, kernel: str | None = None,
                   **lab_options) -> tuple[int, dict | None]:
    """Run ``inner(stage)`` (an argv) in a lab VM and return ``(exit status, result)``.

    ``stage`` is a fresh directory under callpath's run directory, shared with
    the guest and removed afterwards; ``result`` is the JSON object the inner
    run wrote to ``stage / result_name``, or None when it wrote none.
    ``lab_options`` go to ``callpath.probes.labvm.run_in_lab`` (``append``,
    ``tcg_threads``, ``timeout_s``). The guest gets the host's module index
    from run_in_lab, so nothing is rebuilt under TCG.

    Raises ``callpath.probes.labvm.LabError`` (no usable lab kernel) as
    ``choose_kernel`` does.
    """
    from callpath.probes.labvm import choose_kernel, run_in_lab
    from callpath.probes.session import _write_job

    lab = choose_kernel(kernel)
    stage = runstate.make_temp_dir("bench")
    try:
        job = _write_job(stage, ["exec " + shlex.join(inner(stage))])
        rc = run_in_lab(lab, job, [stage], progress=lambda m: print(m, flush=True), **lab_options)
        out = stage / result_name
        return rc, (json.loads(out.read_text()) if out.exists() else None)
    finally:
        runstate.remove_temp_dir(stage)


def show(name: str, rc: int, result: dict | None, json_path: str | None, table: Callable[[dict], str]) -> int:
    """Print ``table(result)`` (and write ``result`` to ``json_path`` as JSON when given); the exit status.

    ``result`` None (the lab run wrote nothing) is a failure, said on stderr under ``name``: 1.
    """
    if result is None:
        print(f"{name}: the lab VM run failed (exit status {rc})", file=sys.stderr)
        return 1
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return rc
