"""The same documents on several lab kernels: one lab VM boot per kernel, one side-by-side report.

Built on :func:`probes.session.verify_in_lab` (one kernel, one trace); the
comparison itself is :mod:`analysis.compare`. Layout of ``out_dir``::

    report-kernels.md / report-kernels.json    the side-by-side report
    <release>/trace.parquet, report.md, ...    each kernel's own run and report
"""

from __future__ import annotations

import time
from pathlib import Path


def verify_kernels(labs, spec_paths: list[Path], specs, out_dir: Path, traffic, progress,
                   timeout_s: float = 1500, probing=None) -> tuple[dict | None, dict[str, str]]:
    """Record the documents on each lab kernel in turn, then compare.

    A kernel whose run fails is named in the result and left out of the
    comparison; the others still run.

    Args:
        labs: :class:`probes.labvm.LabKernel` list (oldest first reads best).
        spec_paths: the documents' paths; ``specs`` the same documents read.
        out_dir: the report directory; each kernel gets ``out_dir/<release>/``.
        traffic: a :class:`probes.session.Traffic`.
        progress: callable taking one status line.
        timeout_s: per kernel, give up on its lab VM after this many seconds.
        probing: a :class:`probes.session.Probing` (probe kind, counting mode), or None.

    Returns:
        (the comparison dict of :func:`analysis.compare.report_traces`, or None
        when no kernel produced a trace; release -> error line for failed kernels).

    Raises:
        KeyboardInterrupt: passed on (the running lab VM is killed by run_in_lab).
    """
    from ..analysis.compare import report_traces
    from ..analysis.trace import read_trace
    from .session import verify_in_lab

    runs, failed = [], {}
    for i, lab in enumerate(labs, 1):
        t0 = time.monotonic()
        progress(f"kernel {i}/{len(labs)}: {lab.release}")
        try:
            trace_path = verify_in_lab(lab, spec_paths, Path(out_dir) / lab.release, traffic,
                                       lambda m, r=lab.release: progress(f"[{r}] {m}"), timeout_s, specs=specs,
                                       probing=probing)
        except Exception as err:  # noqa: BLE001 - a failed kernel must not stop the others
            failed[lab.release] = f"{type(err).__name__}: {err}"
            progress(f"kernel {lab.release} failed after {time.monotonic() - t0:.0f} s: {err}")
            continue
        progress(f"kernel {lab.release}: recorded in {time.monotonic() - t0:.0f} s")
        runs.append((read_trace(trace_path), specs))
    if not runs:
        return None, failed
    cmp, _reports = report_traces(runs, out_dir, progress, failed)
    return cmp, failed
