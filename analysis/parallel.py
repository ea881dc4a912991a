"""Many traces, one side-by-side report: the per-trace analysis on every core, or on a Dask cluster.

A fleet has one trace per machine and kernel. Each trace is analysed on its
own (read, call trees, conformance, journeys, ``report.json``/``.md``, PNGs,
``report.html`` in ``OUT/<label>/``) by :func:`analyse_one`, a plain function
of file names, so the same code runs

* in this process (one trace, or ``workers=1``),
* in a ``concurrent.futures`` process pool with one worker per core (default),
* on a Dask distributed cluster given its scheduler address
  (``pip install 'callpath[dask]'``); the traces and ``OUT`` must then be on a
  file system every Dask worker sees under the same path.

Only the per-trace report dicts come back; :func:`analysis.compare.write_comparison`
puts them side by side (``report-kernels.json``/``.md`` in ``OUT``: per path
and step the verdict on each kernel, differences marked, function drift).
A trace that cannot be read is named in the comparison (``failed``), one
line, and does not stop the others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from .trace import META_KEY, TraceError


class ClusterError(RuntimeError):
    """The Dask scheduler cannot be used (Dask not installed, address unreachable). One line."""


def trace_files(args: list[str]) -> list[Path]:
    """The trace files the ``callpath report`` arguments name, in argument order.

    Each argument is a Parquet file; a folder holding ``trace.parquet`` (a
    report folder); or a folder of traces: its ``*.parquet`` files, else its
    subfolders' ``trace.parquet`` (what ``verify --kernel all`` writes), sorted by name.

    Raises:
        TraceError: an argument does not exist, or a folder holds no trace.
    """
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if not p.is_dir():
            out.append(p)  # read_trace names a missing or bad file
            continue
        if (p / "trace.parquet").is_file():
            out.append(p / "trace.parquet")
            continue
        found = sorted(f for f in p.glob("*.parquet") if f.is_file()) or sorted(
            f for f in p.glob("*/trace.parquet") if f.is_file())
        if not found:
            raise TraceError(f"{p}: no trace in this folder (no trace.parquet, *.parquet or */trace.parquet)")
        out += found
    return out


def trace_kernel(path: str | Path) -> str:
    """The kernel release in a trace's metadata (read from the Parquet footer only), or ``unknown``."""
    try:
        meta = json.loads((pq.read_schema(path).metadata or {}).get(META_KEY, b"{}"))
        return str(meta.get("kernel") or "unknown") if isinstance(meta, dict) else "unknown"
    except Exception:  # noqa: BLE001 - analyse_one reports the real error
        return "unknown"


def analyse_one(trace_path: str, spec_args: list[str] | None, out_dir: str, max_doc_bytes: int | None = None,
                draw_workers: int = 1) -> dict:
    """Analyse one trace and write its report into ``out_dir``. Runs in a worker.

    Args:
        trace_path: the trace's Parquet file.
        spec_args: documents (files or folders); None: those named in the trace's metadata.
        out_dir: the report folder (created).
        draw_workers: processes drawing the PNGs.

    Returns:
        ``{"report": report dict}`` or ``{"error": one line}`` when the trace
        or a document cannot be read or the folder cannot be written.
    """
    from .report import finish_report, write_report  # noqa: PLC0415 - heavy imports in the worker only
    from .readers import read_specs  # noqa: PLC0415
    from .spec import SpecError  # noqa: PLC0415
    from .trace import read_trace  # noqa: PLC0415

    try:
        trace = read_trace(trace_path)
        specs = read_specs(spec_args or trace.meta.get("specs", []), max_doc_bytes)
        jobs: list = []
        report = write_report(trace, specs, out_dir, plot_jobs=jobs, release_events=True)
        finish_report(report, out_dir, jobs, draw_workers)
        return {"report": report}
    except (TraceError, SpecError) as err:
        return {"error": str(err)}
    except OSError as err:
        return {"error": f"{err.filename or trace_path}: {err.strerror or err}"}


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_local(calls: list[tuple], workers: int) -> list[dict]:
    if workers <= 1 or len(calls) <= 1:
        return [analyse_one(*c) for c in calls]
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    # spawn: a fresh interpreter per worker, nothing inherited from this one's threads
    with ProcessPoolExecutor(min(workers, len(calls)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(analyse_one, *c) for c in calls]
        return [_result(f) for f in futures]


def _result(future) -> dict:
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - a worker died or raised: name it, go on with the others
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def _run_dask(calls: list[tuple], scheduler: str) -> list[dict]:
    try:
        from dask.distributed import Client  # noqa: PLC0415
    except ImportError:
        raise ClusterError("--scheduler needs Dask: pip install 'dask[distributed]' (or callpath[dask])") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {str(err).splitlines()[0]}") from None
    with client:
        futures = [client.submit(analyse_one, *c, pure=False) for c in calls]
        return [_result(f) for f in futures]


def analyse_many(paths: list[Path], spec_args: list[str] | None, out_dir: str | Path, scheduler: str | None = None,
                 workers: int | None = None, max_doc_bytes: int | None = None,
                 progress=lambda line: None) -> tuple[dict, list[dict]]:
    """Each trace's report in ``out_dir/<label>/`` and the side-by-side report in ``out_dir``.

    Args:
        paths: trace files (:func:`trace_files`).
        spec_args: documents for every trace; None: each trace's own.
        scheduler: a Dask scheduler address (``tcp://host:8786``); None: local processes.
        workers: local processes (default: every core).

    Returns:
        ``(comparison, reports)``: the dict :func:`analysis.compare.write_comparison`
        wrote, and the per-trace report dicts of the traces that could be read.

    Raises:
        ClusterError: the scheduler cannot be used.
    """
    from .compare import labels, write_comparison  # noqa: PLC0415

    out_dir = Path(out_dir).resolve()
    names = labels([{"kernel": trace_kernel(p)} for p in paths])
    subs = [n.replace("/", "_").replace("#", "-") for n in names]
    calls = [(str(Path(p).resolve()), spec_args, str(out_dir / s), max_doc_bytes) for p, s in zip(paths, subs)]
    where = f"on the Dask cluster at {scheduler}" if scheduler else f"in {min(workers or cores(), len(calls))} processes"
    progress(f"analysing {len(calls)} traces {where}")
    results = _run_dask(calls, scheduler) if scheduler else _run_local(calls, workers or cores())
    reports, dirs, failed = [], [], {}
    for name, sub, res in zip(names, subs, results):
        if "report" in res:
            reports.append(res["report"])
            dirs.append(sub)
        else:
            failed[name] = res["error"]
            progress(f"{name}: {res['error']}")
    return write_comparison(reports, out_dir, dirs, failed), reports
