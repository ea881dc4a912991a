"""``callpath lint``: check documents against a kernel without traffic or probes.

For every documented function: one status from :data:`LINT_STATUSES`, the
kallsyms symbol, the module that holds it (``vmlinux``, or a module, loaded or
not: :mod:`probes.modindex`), a successor for renamed functions, and how the
arguments written in the document compare with the kernel's BTF parameter
names. Lint loads nothing: a function of a module that is not loaded is
reported as such, with the command that loads it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..analysis.spec import Spec
from ..analysis.textsafe import terminal_lines
from .modindex import fix_command
from .plan import MODULE_NOT_LOADED, FunctionPlan, ProbePlan

LINT_STATUSES = ("traceable", "clone", "inlined", "boot-only", "not-traceable", MODULE_NOT_LOADED, "absent", "present")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ArgumentMismatch:
    """One documented argument that differs from the kernel's parameter.

    ``position`` is 1-based; ``documented`` the text in the document;
    ``kernel`` the BTF parameter name (``None`` when the kernel takes fewer).
    """

    step: str
    line: int
    position: int
    documented: str
    kernel: str | None


@dataclass
class LintEntry:
    """The lint result for one documented function.

    Attributes:
        function: the documented name.
        status: one of :data:`LINT_STATUSES` (``present``: in kallsyms, but whether
            ftrace can attach is unknown because ``available_filter_functions``
            was unreadable).
        symbol, module: where it lives (a clone's own name for ``clone``);
            ``module`` is ``vmlinux``, a module name, or None when unknown (absent).
        module_loaded: for a module, whether it was loaded (None for vmlinux/unknown).
        successor: for an absent or not-traceable function, the function found to
            run in its place (``probes.successors``; probed in its place by record).
        reason: one line a person can read.
        params: the kernel's parameter names from BTF (``[]`` unknown).
        mismatches: documented arguments that differ from ``params``.
        where: ``file:line`` of every step naming the function.
        inlined_into: for ``inlined``: ``"symbol+offset (file:line)"`` per inline
            site, from DWARF (:mod:`probes.inline`).
    """

    function: str
    status: str
    symbol: str | None = None
    module: str | None = None
    module_loaded: bool | None = None
    successor: str | None = None
    reason: str = ""
    params: list[str] = field(default_factory=list)
    mismatches: list[ArgumentMismatch] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    inlined_into: list[str] = field(default_factory=list)


def lint_status(fp: FunctionPlan, traceable_known: bool) -> str:
    """Map a plan entry to a lint status."""
    if fp.status == MODULE_NOT_LOADED:
        return MODULE_NOT_LOADED
    if fp.boot_only:
        return "boot-only"
    if fp.status == "traceable" and not traceable_known:
        return "present"
    return fp.status


def compare_arguments(documented: list[str], params: list[str]) -> list[tuple[int, str, str | None]]:
    """Positions where a documented plain-name argument differs from the BTF parameter name.

    Elided (``""``) and expression arguments (``&x``, ``tb[IFLA_LINK]``, ``0``) are
    not compared; extra documented arguments beyond the kernel's count are reported
    with ``kernel=None``.

    Returns:
        ``[(position (1-based), documented, kernel name or None)]``.
    """
    out = []
    for i, arg in enumerate(documented):
        if not arg:
            continue
        if i >= len(params):
            out.append((i + 1, arg, None))
            continue
        if _IDENT.match(arg) and params[i] and arg != params[i]:
            out.append((i + 1, arg, params[i]))
    return out


def lint(specs: list[Spec], plan: ProbePlan, traceable_known: bool, modules: dict[str, str] | None = None) -> dict:
    """Lint results for ``specs`` against the kernel described by ``plan``.

    Args:
        specs: documents read.
        plan: a probe plan built for the target kernel with BTF.
        traceable_known: whether ``available_filter_functions`` was readable.
        modules: module -> what loading it gave (``probes.kernel.modules_loaded``),
            when the caller loaded modules (lab VM only).

    Returns:
        ``{"kernel", "traceable_known", "documents": [{"source", "functions":
        [LintEntry dict], "counts"}], "absent": n, "modules_not_loaded": {module:
        [functions]}, "modules": modules}``; the caller exits non-zero when
        ``absent`` > 0 (a function of a module that is not loaded is not absent).
    """
    modules = modules or {}
    documents = []
    total_absent = 0
    not_loaded: dict[str, list[str]] = {}
    for spec in specs:
        entries: dict[str, LintEntry] = {}
        for path in spec.paths:
            for step in path.steps:
                for i, fn in enumerate(step.chain):
                    fp = plan.functions.get(fn)
                    if fp is None:
                        continue
                    e = entries.get(fn)
                    if e is None:
                        e = LintEntry(fn, lint_status(fp, traceable_known), fp.symbol, fp.module,
                                      successor=fp.successor, reason=fp.reason, params=list(fp.params),
                                      inlined_into=[f"{x['probe']} ({x['file'] or '?'}:{x['line']})"
                                                    for x in fp.inline_sites])
                        if fp.module and fp.module != "vmlinux":
                            e.module_loaded = fp.status != MODULE_NOT_LOADED
                        if e.module_loaded is False:
                            if fn not in not_loaded.setdefault(fp.module, []):
                                not_loaded[fp.module].append(fn)
                            why = modules.get(fp.module, "")
                            if why.startswith("unavailable"):
                                e.reason += f" (loading it failed: {why.split(':', 1)[1].strip()})"
                        entries[fn] = e
                    e.where.append(f"{spec.source}:{step.line}")
                    written = step.args[i] if i < len(step.args) else []
                    if e.params and written:
                        for pos, doc, kern in compare_arguments(written, e.params):
                            e.mismatches.append(ArgumentMismatch(step.number, step.line, pos, doc, kern))
        counts = {s: 0 for s in LINT_STATUSES}
        for e in entries.values():
            counts[e.status] += 1
        total_absent += counts["absent"]
        documents.append({"source": spec.source, "functions": [asdict(e) for e in entries.values()], "counts": counts,
                          "warnings": list(spec.warnings)})
    return {"kernel": plan.release, "traceable_known": traceable_known, "documents": documents, "absent": total_absent,
            "modules_not_loaded": not_loaded, "modules": dict(modules)}


def render_text(result: dict) -> str:
    """Lint results for people: one line per function, mismatches indented below.

    Document and kernel text is escaped for the terminal (``analysis.textsafe.terminal``).
    """
    lines = [f"kernel {result['kernel']}" + ("" if result["traceable_known"] else
             " (available_filter_functions unreadable: traceability unknown, shown as 'present')")]
    for doc in result["documents"]:
        lines.append(f"\n{doc['source']}: " + ", ".join(f"{v} {k}" for k, v in doc["counts"].items() if v))
        for f in doc["functions"]:
            sym = f" as {f['symbol']}" if f["symbol"] and f["symbol"] != f["function"] else ""
            succ = f" -> successor {f['successor']}" if f["successor"] else ""
            mod = f.get("module") or "module unknown"
            if f.get("module_loaded") is not None:
                mod += ", loaded" if f["module_loaded"] else ", not loaded"
            lines.append(f"  {f['status']:<17} {f['function']}{sym}{succ} [{mod}]  ({f['where'][0]}: {f['reason']})")
            for site in f.get("inlined_into", []):
                lines.append(f"      inline site {site}")
            for m in f["mismatches"]:
                kern = f"kernel names it {m['kernel']!r}" if m["kernel"] else "kernel takes fewer arguments"
                lines.append(f"      step {m['step']} (line {m['line']}): argument {m['position']} "
                             f"written {m['documented']!r}, {kern}")
    if result.get("inline_note"):
        lines.append(f"\ninlining: {result['inline_note']}")
    for mod, fns in sorted(result.get("modules_not_loaded", {}).items()):
        lines.append(f"\nmodule {mod} is not loaded (functions {', '.join(fns)}): {fix_command(mod)}")
    return terminal_lines("\n".join(lines))
