"""Many traces -> one side-by-side report: the same documents on several kernels.

Input is one per-kernel report each (:func:`analysis.report.build_report`),
all made from the same documents. Output (``report-kernels.json`` / ``.md``):

* ``steps``: per documented step, the verdict on each kernel, changes marked;
* ``drift``: per documented function whose facts differ between kernels (or
  that no kernel has), what changed, from each kernel's probe plan:

  - ``appeared`` / ``vanished``: in kallsyms on later / only on earlier kernels;
  - ``renamed``: vanished, and a successor is in kallsyms (``netif_rx_ni`` -> ``netif_rx``);
  - ``inlined``: on some kernel not a function of its own but inline sites of
    it were found (plan status ``inlined``, from DWARF); ``absent`` alone means
    "inlined or removed" (no debug info said which);
  - ``clone``: now only a compiler clone (``.isra``/``.constprop``) is there;
  - ``traceability``: present on both but traceable on one only (notrace, blacklist);
  - ``signature``: the BTF parameters or return type differ;
  - ``module``: moved between vmlinux and a module;
  - ``absent everywhere`` / ``inlined everywhere``: the same on every kernel
    (no drift, but the document names no callable function there).

Kernels are ordered oldest first by release (natural sort), so ``appeared``
and ``vanished`` read in time order. Nothing here imports probes or bcc.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PRESENT = ("traceable", "clone", "not-traceable")


def release_key(release: str) -> tuple:
    """Natural sort key of a kernel release: ``6.1.0-56-amd64`` < ``6.12.117+deb12-amd64``."""
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+~-]", release))


def labels(reports: list[dict]) -> list[str]:
    """One column label per report: its kernel release, ``#2``... appended to repeats."""
    seen: dict[str, int] = {}
    out = []
    for r in reports:
        k = str(r.get("kernel") or "unknown")
        seen[k] = seen.get(k, 0) + 1
        out.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return out


def signature(fp: dict) -> str | None:
    """``(src_net, dev, tb, data, extack) -> int`` from a plan entry, None when BTF gave nothing."""
    if not fp or (not fp.get("params") and not fp.get("return_type")):
        return None
    return f"({', '.join(fp.get('params') or [])})" + (f" -> {fp['return_type']}" if fp.get("return_type") else "")


def _state(fp: dict | None) -> str:
    if not fp:
        return "not planned"
    s = fp["status"]
    if s == "clone" and fp.get("symbol"):
        return f"clone {fp['symbol']}"
    if s == "absent" and fp.get("successor"):
        return f"absent (successor {fp['successor']})"
    if s == "inlined":
        return f"inlined ({len(fp.get('inline_sites') or [])} sites)"
    return s


def function_drift(plans: dict[str, dict], documented: set[str] | None = None) -> list[dict]:
    """What changed per function between kernels.

    Args:
        plans: label -> plan functions (``report["plan"]``), oldest kernel first.
        documented: only these functions (the documents' steps); None: every planned
            one (plans also hold helpers probed for packet tracking, which are no step).

    Returns:
        ``[{"function", "changes": [str], "kinds": [str], "per_kernel": {label: {"state", "signature", "module"}}}]``
        for every function with a change or absent on every kernel, in document order.
    """
    names: dict[str, None] = {}
    for fns in plans.values():
        names.update(dict.fromkeys(fns))
    out = []
    order = list(plans)
    for name in names:
        if documented is not None and name not in documented:
            continue
        per = {k: plans[k].get(name) for k in order}
        kinds: list[str] = []
        changes: list[str] = []
        present = [k for k in order if per[k] and per[k]["status"] in PRESENT]
        absent = [k for k in order if per[k] and per[k]["status"] == "absent"]
        inlined = [k for k in order if per[k] and per[k]["status"] == "inlined"]
        if inlined and not present and not absent:
            kinds.append("inlined everywhere")
            changes.append("inlined on every kernel")
        elif inlined:
            kinds.append("inlined")
            changes.append("; ".join(f"{_state(per[k])} on {k}" for k in order if per[k]))
        if not present and absent and not inlined:
            kinds.append("absent everywhere")
            succ = {per[k].get("successor") for k in absent} - {None}
            changes.append("absent on every kernel" + (f" (successor {', '.join(sorted(succ))})" if succ else ""))
        elif present and absent:
            first_present, last_present = order.index(present[0]), order.index(present[-1])
            for k in absent:
                i = order.index(k)
                if i < first_present:
                    kinds.append("appeared")
                    changes.append(f"absent on {k}, in kallsyms from {present[0]}")
                elif per[k].get("successor"):
                    kinds.append("renamed")
                    changes.append(f"gone on {k}: successor {per[k]['successor']}")
                elif i > last_present:
                    kinds.append("vanished")
                    changes.append(f"gone on {k} (inlined into its callers, or removed)")
                else:
                    kinds.append("vanished")
                    changes.append(f"absent on {k} only (inlined there, or removed)")
        statuses = {k: per[k]["status"] for k in present}
        if len(set(statuses.values())) > 1:
            if any(s == "clone" for s in statuses.values()):
                kinds.append("clone")
            else:
                kinds.append("traceability")
            changes.append("; ".join(f"{_state(per[k])} on {k}" for k in present))
        sigs = {k: signature(per[k]) for k in present if signature(per[k])}
        if len(set(sigs.values())) > 1:
            kinds.append("signature")
            changes.append(" vs ".join(f"{name}{s} on {k}" for k, s in sigs.items()))
        mods = {k: per[k].get("module") for k in present if per[k].get("module")}
        if len(set(mods.values())) > 1:
            kinds.append("module")
            changes.append(", ".join(f"in {m} on {k}" for k, m in mods.items()))
        if kinds:
            out.append({"function": name, "kinds": list(dict.fromkeys(kinds)), "changes": changes,
                        "per_kernel": {k: {"state": _state(per[k]), "signature": signature(per[k]) if per[k] else None,
                                           "module": per[k].get("module") if per[k] else None} for k in order}})
    return out


def step_table(reports: dict[str, dict]) -> list[dict]:
    """Per path and step, the verdict on each kernel.

    Paths are matched by (document, path number, name) and steps by their
    number, so documents must be the same on every kernel; a path missing on
    a kernel shows ``None`` there.

    Returns:
        ``[{"path", "source", "number", "summary": {label: "observed/checkable"},
        "steps": [{"number", "text", "function", "verdicts": {label: verdict|None}, "changed": bool}]}]``.
    """
    order = list(reports)
    paths: dict[tuple, dict] = {}
    for k in order:
        for p in reports[k]["paths"]:
            key = (p.get("spec") or p["source"], p["number"], p["name"])
            entry = paths.setdefault(key, {"path": p["name"], "source": p["source"], "number": p["number"],
                                           "summary": {}, "steps": {}})
            entry["summary"][k] = f"{p['summary']['observed']}/{p['summary']['checkable']}"
            for s in p["steps"]:
                st = entry["steps"].setdefault(str(s["number"]), {"number": s["number"], "text": s["text"],
                                                                  "function": s.get("function"), "verdicts": {}})
                st["verdicts"][k] = s["verdict"]
    out = []
    for entry in paths.values():
        steps = []
        for st in entry["steps"].values():
            st["verdicts"] = {k: st["verdicts"].get(k) for k in order}
            st["changed"] = len(set(st["verdicts"].values())) > 1
            steps.append(st)
        entry["summary"] = {k: entry["summary"].get(k) for k in order}
        entry["steps"] = steps
        out.append(entry)
    return out


def compare_reports(reports: list[dict], report_dirs: list[str] | None = None) -> dict:
    """Side-by-side report of the same documents on several kernels.

    Args:
        reports: per-kernel report dicts (any order; sorted oldest kernel first).
        report_dirs: each report's directory relative to where the comparison
            is written (for links), same order as ``reports``.

    Returns:
        ``{"kernels": [label], "reports": {label: dir}, "where": {label: str},
        "fields": {label: plan fields}, "drift": [...function_drift...],
        "paths": [...step_table...], "changed_steps": int}``.
    """
    dirs = list(report_dirs or [None] * len(reports))
    order = sorted(range(len(reports)), key=lambda i: release_key(str(reports[i].get("kernel", ""))))
    reports = [reports[i] for i in order]
    dirs = [dirs[i] for i in order]
    names = labels(reports)
    by = dict(zip(names, reports))
    paths = step_table(by)
    return {
        "kernels": names,
        "reports": dict(zip(names, dirs)),
        "where": {k: r.get("where", "") for k, r in by.items()},
        "events": {k: r.get("events", 0) for k, r in by.items()},
        "fields": {k: r.get("fields", {}) for k, r in by.items()},
        "drift": function_drift({k: r.get("plan", {}) for k, r in by.items()},
                                {s["function"] for p in paths for s in p["steps"] if s.get("function")}),
        "paths": paths,
        "changed_steps": sum(s["changed"] for p in paths for s in p["steps"]),
    }


def _cell(text) -> str:
    return str(text if text is not None else "—").replace("|", "\\|").replace("\n", " ")


def render_markdown(cmp: dict) -> str:
    """The comparison as Markdown: drift table first, then verdicts per step."""
    ks = cmp["kernels"]
    lines = ["# callpath: the documents on several kernels", ""]
    for k in ks:
        link = f" — [report]({cmp['reports'][k]}/report.md)" if cmp["reports"].get(k) else ""
        lines.append(f"- `{k}`: {cmp['where'].get(k) or 'running kernel'}, {cmp['events'].get(k, 0)} events{link}")
    for k, err in (cmp.get("failed") or {}).items():
        lines.append(f"- `{k}`: **no trace** ({_cell(err)})")
    lines += ["", "## Drift: documented functions that differ between kernels", ""]
    if cmp["drift"]:
        lines += ["| function | " + " | ".join(f"`{k}`" for k in ks) + " | change |",
                  "|---|" + "---|" * len(ks) + "---|"]
        for d in cmp["drift"]:
            cells = []
            for k in ks:
                pk = d["per_kernel"][k]
                cells.append(_cell(pk["state"] + (f" {pk['signature']}" if pk.get("signature") else "")))
            lines.append(f"| `{d['function']}` | " + " | ".join(cells) + f" | **{', '.join(d['kinds'])}**: "
                         + _cell("; ".join(d["changes"])) + " |")
    else:
        lines.append("No documented function differs between these kernels.")
    lines += ["", f"## Verdicts per step ({cmp['changed_steps']} differ, marked ≠)", "",
              "| path | " + " | ".join(f"`{k}`" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for p in cmp["paths"]:
        lines.append(f"| {_cell(p['path'])} | " + " | ".join(_cell(p["summary"][k]) for k in ks) + " |")
    for p in cmp["paths"]:
        lines += ["", f"### {p['number']}. {_cell(p['path'])}", "", f"Source: `{p['source']}`", "",
                  "| step | documented | " + " | ".join(f"`{k}`" for k in ks) + " | |",
                  "|---|---|" + "---|" * len(ks) + "---|"]
        for s in p["steps"]:
            mark = "≠" if s["changed"] else ""
            cells = [f"**{_cell(s['verdicts'][k])}**" if s["changed"] else _cell(s["verdicts"][k]) for k in ks]
            lines.append(f"| {s['number']} | `{_cell(s['text'])}` | " + " | ".join(cells) + f" | {mark} |")
    lines.append("")
    return "\n".join(lines)


def write_comparison(reports: list[dict], out_dir: str | Path, report_dirs: list[str] | None = None,
                     failed: dict[str, str] | None = None) -> dict:
    """Write ``report-kernels.json`` and ``report-kernels.md`` into ``out_dir``; return the comparison dict.

    ``failed``: kernel -> error line of runs that produced no trace (listed, not compared).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmp = compare_reports(reports, report_dirs)
    cmp["failed"] = dict(failed or {})
    (out_dir / "report-kernels.json").write_text(json.dumps(cmp, indent=2, default=str) + "\n")
    (out_dir / "report-kernels.md").write_text(render_markdown(cmp))
    return cmp


def report_traces(runs: list[tuple], out_dir: str | Path, progress=lambda m: None,
                  failed: dict[str, str] | None = None) -> tuple[dict, list[dict]]:
    """Each trace's own report in ``out_dir/<kernel release>/``, and the side-by-side report in ``out_dir``.

    Args:
        runs: ``(trace, specs)`` pairs: an :class:`analysis.trace.Trace` and the
            documents to check it against (the same documents for a useful comparison).
        out_dir: the comparison's directory.
        progress: callable taking one status line.
        failed: kernel -> error line of runs without a trace (named in the report).

    Returns:
        (comparison dict, per-trace report dicts in the order given).
    """
    from .report import write_report  # noqa: PLC0415 - pandas/matplotlib only when reports are written

    out_dir = Path(out_dir)
    reports, dirs = [], []
    names = labels([{"kernel": t.kernel} for t, _ in runs])
    for (trace, specs), name in zip(runs, names):
        sub = name.replace("/", "_").replace("#", "-")
        progress(f"analysing the trace of {name}: call trees, conformance, latency")
        reports.append(write_report(trace, specs, out_dir / sub))
        dirs.append(sub)
    return write_comparison(reports, out_dir, dirs, failed), reports
